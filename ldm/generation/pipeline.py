"""Prompts to PIL images with diffusers' `StableDiffusionPipeline`: the one path for sample.py, the app,
evaluate.py and the training callback.

Why the prompt goes through the module, not the pipeline: `TextEncoderFineTuner.encode_text` is the exact
conditioning that training optimises (a text projection included), so the pipeline gets `prompt_embeds`
and its own text-encoder slot stays empty. That also keeps the live module's fp32 text-encoder output
from meeting an fp16 U-Net while a GPU run trains (the pipeline would cast embeddings to the text
encoder's dtype). No safety checker: it returns black images for false positives.
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from ldm.generation import fast
from ldm.generation.guidance import GuidanceInterval, is_full
from ldm.generation.schedulers import make_scheduler
from ldm.generation.settings import MAX_SEED, SampleSettings, validate_settings
from ldm.training.module import TextEncoderFineTuner

log = logging.getLogger(__name__)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def build_pipeline(model: TextEncoderFineTuner, scheduler: str) -> StableDiffusionPipeline:
    """Assemble the pipeline from the module's own components (no copies, no dtype or mode changes)."""
    return StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=None,  # prompts are encoded by model.encode_text (see the module docstring)
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=make_scheduler(scheduler, model.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def native_size(model: TextEncoderFineTuner) -> int:
    """The image size the U-Net was built for: sample_size latents x the VAE's down-sampling."""
    return model.unet.config.sample_size * 2 ** (len(model.vae.config.block_out_channels) - 1)


def warn_if_truncated(tokenizer: Any, texts: Iterable[str]) -> None:
    """CLIP reads 77 tokens (start and end included); say how many of a longer prompt are dropped."""
    limit = tokenizer.model_max_length
    for text in dict.fromkeys(texts):
        count = len(tokenizer(text, truncation=False, verbose=False).input_ids)
        if count > limit:
            short = text if len(text) <= 60 else text[:57] + "..."
            log.warning(
                "prompt %r is %d tokens but CLIP reads %d: the last %d tokens were cut",
                short,
                count,
                limit,
                count - limit,
            )


@torch.no_grad()
def encode_prompts(model: TextEncoderFineTuner, texts: Sequence[str]) -> torch.Tensor:
    """(B,) prompts -> (B, 77, cross_attention_dim) U-Net conditioning, in the U-Net's dtype."""
    tokenizer = model.tokenizer
    ids = tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids  # (B, 77)
    device = next(model.text_encoder.parameters()).device
    return model.encode_text(ids.to(device)).to(model.unet.dtype)


@torch.no_grad()  # the decode runs here now, outside the pipeline's own no_grad
def generate(
    model: TextEncoderFineTuner,
    settings: SampleSettings,
    *,
    checkpoint: str | None = None,
    progress: bool = False,
    on_step: Callable[..., dict] | None = None,
    prompt_seeds: Sequence[int] | None = None,
    release_models: bool = False,
) -> list[Image.Image]:
    """Render `num_images` per prompt (seeds seed, seed+1, ...); each image's `.info` holds its metadata.

    The module's train/eval mode is restored afterwards, so the training callback can call this on the
    live module. Noise comes from per-image CPU generators: the same seed gives the same image whatever
    the batch size or device. The options `load_for_inference` installed (bf16 autocast, DeepCache) apply
    to each pipeline call. `on_step` is diffusers' `callback_on_step_end(pipe, step, timestep, kwargs)`.
    `prompt_seeds` gives each prompt its own first seed instead of `settings.seed` (adherence: independent noise).

    It runs in three stages, each model only in its own: every batch's prompts are encoded, then every
    batch is denoised to latents, then every latent is decoded. `release_models=True` (a one-shot run:
    sample.py) drops the text encoder after the first stage and the U-Net after the second, so their
    weights (0.5 and 3.4 GB for SD1.5) are not resident while the VAE decodes a 512 px image, the run's
    peak (docs/performance.md, Memory). The model cannot generate again afterwards.
    """
    validate_settings(settings)
    warn_if_truncated(model.tokenizer, (*settings.prompts, settings.negative_prompt))
    seed = random.SystemRandom().randint(0, MAX_SEED) if settings.seed is None else settings.seed
    height, width = settings.height or native_size(model), settings.width or native_size(model)
    firsts = [seed] * len(settings.prompts) if prompt_seeds is None else list(prompt_seeds)
    pairs = zip(settings.prompts, firsts, strict=True)
    jobs = [(prompt, first + i) for prompt, first in pairs for i in range(settings.num_images)]
    batches = [jobs[start : start + settings.batch_size] for start in range(0, len(jobs), settings.batch_size)]
    options = fast.installed(model)
    base_info = {
        "negative_prompt": settings.negative_prompt,
        "steps": settings.steps,
        "scheduler": settings.scheduler,
        "guidance_scale": settings.guidance_scale,
        "height": height,
        "width": width,
        "checkpoint": checkpoint or "none",
        "model": model.hparams.get("pretrained", ""),
        "precision": getattr(model.unet, "engine_precision", None)  # the OpenVINO engine's
        or ("bf16-autocast" if options and options.autocast_bf16 else DTYPE_NAMES[model.unet.dtype]),
        "deep_cache": options.deep_cache if options else "off",
        **({} if is_full(settings.guidance_interval) else {"guidance_interval": list(settings.guidance_interval)}),
        **({"guidance_rescale": settings.guidance_rescale} if settings.guidance_rescale else {}),
    }
    autocast = options.autocast if options else nullcontext
    was_training = model.training
    model.eval()
    try:
        with autocast():  # both sides of guidance under the U-Net's autocast, so they share one precision
            positives = [encode_prompts(model, [prompt for prompt, _ in batch]) for batch in batches]  # (B, 77, D)
            negative = encode_prompts(model, [settings.negative_prompt])  # (1, 77, D), once for every batch
        if release_models:
            release(model, "text_encoder")
        pipe = build_pipeline(model, settings.scheduler)
        pipe.set_progress_bar_config(disable=not progress)
        latents = [
            denoise(pipe, model, settings, batch, positive, negative.expand_as(positive), height, width, on_step)
            for batch, positive in zip(batches, positives, strict=True)
        ]
        processor = pipe.image_processor
        del pipe
        if release_models:
            release(model, "unet")
        images: list[Image.Image] = []
        for batch, batch_latents in zip(batches, latents, strict=True):
            with autocast():
                pixels = model.vae.decode(batch_latents / model.vae.config.scaling_factor, return_dict=False)[0]
            decoded = processor.postprocess(pixels, output_type="pil", do_denormalize=[True] * len(batch))
            for (prompt, image_seed), image in zip(batch, decoded, strict=True):
                image.info.update({**base_info, "prompt": prompt, "seed": image_seed})
                images.append(image)
    finally:
        if not release_models:  # a released model is done with
            model.train(was_training)
    return images


def denoise(
    pipe: StableDiffusionPipeline,
    model: TextEncoderFineTuner,
    settings: SampleSettings,
    batch: Sequence[tuple[str, int]],
    positive: torch.Tensor,
    negative: torch.Tensor,
    height: int,
    width: int,
    on_step: Callable[..., dict] | None,
) -> torch.Tensor:
    """One pipeline call: the (prompt, seed) batch's final latents, (B, 4, h, w), not yet decoded."""
    options = fast.installed(model)
    with options.active(model.unet) if options else nullcontext():
        scale, callback, inputs = settings.guidance_scale, on_step, ["latents"]
        if settings.guidance_scale > 1 and not is_full(settings.guidance_interval):
            callback = GuidanceInterval(settings.guidance_interval, settings.steps, scale, positive, negative, on_step)
            scale, inputs = callback.initial_scale, ["latents", "prompt_embeds"]
        return pipe(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=height,
            width=width,
            num_inference_steps=settings.steps,
            guidance_scale=scale,
            guidance_rescale=settings.guidance_rescale,
            generator=[torch.Generator("cpu").manual_seed(s) for _, s in batch],
            output_type="latent",
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=inputs,
        ).images


def release(model: TextEncoderFineTuner, name: str) -> None:
    """Drop one of the model's parts; its weights (memory-mapped from the checkpoint files) leave the RSS."""
    setattr(model, name, None)
    gc.collect()
