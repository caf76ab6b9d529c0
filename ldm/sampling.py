"""Prompts to PIL images with diffusers' `StableDiffusionPipeline`: the one path for sample.py, app.py and
the training callback.

Why the prompt goes through the module, not the pipeline: `TextEncoderFineTuner.encode_text` is the exact
conditioning that training optimises (a text projection included), so the pipeline gets `prompt_embeds`
and its own text-encoder slot stays empty. That also keeps the live module's fp32 text-encoder output
from meeting an fp16 U-Net while a GPU run trains (the pipeline would cast embeddings to the text
encoder's dtype). No safety checker: it returns black images for false positives.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from hydra.core.hydra_config import HydraConfig
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ldm import fast_sampling
from ldm.checkpoints import CheckpointError, ModelLoadError, build_model
from ldm.config import ConfigError
from ldm.fast_sampling import FastSampling, FastSamplingError
from ldm.module import CheckpointMismatchError, TextEncoderFineTuner

log = logging.getLogger(__name__)

# name -> (class, config overrides). DDIM's own default clip_sample=True turns SD latents (not in [-1, 1])
# into blobs (DESIGN.md), so it is forced off as SD1.5's scheduler config has it.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "dpm++": (DPMSolverMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
}
ATTENTION_SLICING = ("off", "auto", "on")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
MAX_SEED = 2**32 - 1  # seeds people can type; image i of a prompt uses seed + i
METADATA_KEYS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "scheduler",
    "guidance_scale",
    "height",
    "width",
    "checkpoint",
    "model",
    "precision",
    "deep_cache",
)


class SamplingError(ValueError):
    """A sampling setting that can't work; the message names the setting and what is accepted."""


# What a user can get wrong: entry points print these as one line, without a traceback.
USER_ERRORS = (SamplingError, FastSamplingError, CheckpointError, CheckpointMismatchError, ModelLoadError, ConfigError)


@dataclass(frozen=True)
class SampleSettings:
    """What to render. No defaults here: they live in conf/ (sampling/default.yaml, callbacks/default.yaml)."""

    prompts: tuple[str, ...]
    negative_prompt: str
    steps: int
    guidance_scale: float
    scheduler: str
    seed: int | None  # None: a random one, recorded in each image
    height: int | None  # None: the model's native size (512 for SD1.5, 64 for the tiny model)
    width: int | None
    num_images: int  # per prompt
    batch_size: int

    @classmethod
    def from_config(cls, cfg: Any, prompts: Sequence[str], **fixed: Any) -> SampleSettings:
        """The settings of sample.yaml/app.yaml for `prompts`; `fixed` sets fields a config has no key for
        (the app renders one image per request)."""
        names = [f.name for f in fields(cls) if f.name != "prompts"]
        values = {name: fixed[name] if name in fixed else cfg[name] for name in names}
        values["negative_prompt"] = str(values["negative_prompt"] or "")
        return cls(prompts=tuple(prompts), **values)


@dataclass(frozen=True)
class Limits:
    """Ranges accepted from users (conf `limits:`); the app's are tighter than sample.py's."""

    min_size: int
    max_size: int
    max_steps: int
    max_guidance: float
    max_prompt_chars: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SamplingError(message)


def validate_settings(s: SampleSettings, limits: Limits | None = None) -> None:
    """Raise `SamplingError` for settings that can't render; with `limits`, also for those out of range."""
    _require(bool(s.prompts), "no prompt: give prompt=... or prompts_file=...")
    for prompt in s.prompts:
        _require(isinstance(prompt, str) and bool(prompt.strip()), "prompt is empty: describe the image to render")
    _require(s.scheduler in SCHEDULERS, f"scheduler={s.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    _require(_is_int(s.steps) and s.steps >= 1, f"steps={s.steps!r}: expected an integer ≥ 1")
    _require(
        isinstance(s.guidance_scale, int | float) and s.guidance_scale >= 0,
        f"guidance_scale={s.guidance_scale!r}: expected a number ≥ 0 (≤ 1 turns guidance off)",
    )
    _require(
        s.seed is None or (_is_int(s.seed) and 0 <= s.seed <= MAX_SEED),
        f"seed={s.seed!r}: expected null (random) or an integer in [0, {MAX_SEED}]",
    )
    for key in ("num_images", "batch_size"):
        value = getattr(s, key)
        _require(_is_int(value) and value >= 1, f"{key}={value!r}: expected an integer ≥ 1")
    for key in ("height", "width"):
        value = getattr(s, key)
        _require(
            value is None or (_is_int(value) and value > 0 and value % 8 == 0),
            f"{key}={value!r}: expected null (the model's size) or a positive multiple of 8 (the VAE's cell)",
        )
        if limits is not None and value is not None:
            _require(
                limits.min_size <= value <= limits.max_size,
                f"{key}={value}: expected {limits.min_size} to {limits.max_size} pixels",
            )
    if limits is None:
        return
    _require(s.steps <= limits.max_steps, f"steps={s.steps}: expected at most {limits.max_steps}")
    _require(
        s.guidance_scale <= limits.max_guidance,
        f"guidance_scale={s.guidance_scale}: expected at most {limits.max_guidance}",
    )
    for text in (*s.prompts, s.negative_prompt):
        _require(
            len(text) <= limits.max_prompt_chars,
            f"prompt of {len(text)} characters: expected at most {limits.max_prompt_chars}",
        )


def read_prompts(prompt: str | Iterable[str] | None, prompts_file: str | None) -> list[str]:
    """`prompt` (one string or a list) followed by the non-empty lines of `prompts_file`."""
    if prompt is None:
        prompts = []
    elif isinstance(prompt, str | int | float):
        prompts = [str(prompt)]
    else:
        prompts = [str(p) for p in prompt]
    if prompts_file is not None:
        path = Path(prompts_file)
        _require(path.is_file(), f"prompts_file={prompts_file!r} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return prompts


# --- model and pipeline --------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; a GPU that isn't there is a clear error, not a CUDA traceback."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SamplingError(f"device={name!r}: expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError(f"device={name!r} but torch sees no CUDA GPU here; use device=cpu")
    return device


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (null: torch's own choice, usually the number of cores)."""
    if threads is not None:
        _require(_is_int(threads) and threads >= 1, f"threads={threads!r}: expected null or an integer ≥ 1")
        torch.set_num_threads(threads)


def _check_attention_slicing(value: str) -> None:
    _require(value in ATTENTION_SLICING, f"attention_slicing={value!r}: expected one of {', '.join(ATTENTION_SLICING)}")


def prepare_for_inference(model: TextEncoderFineTuner, device: torch.device, attention_slicing: str) -> None:
    """Frozen eval copy on `device`: fp16 on a GPU, fp32 on a CPU (bf16 autocast is `ldm.fast_sampling`'s).

    No channels_last on CPU: it gave no measurable speed (benchmarks/RESULTS.md) and cost 2.6 GiB, because
    the copies sit beside the memory-mapped weights that `from_pretrained` keeps. Attention slicing saves
    memory at a cost (slower U-Net on CPU, DESIGN.md and benchmarks/RESULTS.md): `auto` = GPU only.
    """
    _check_attention_slicing(attention_slicing)
    model.requires_grad_(False)
    model.eval()
    model.to(device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    if attention_slicing == "on" or (attention_slicing == "auto" and device.type == "cuda"):
        model.unet.set_attention_slice("auto")


def base_chosen_on_command_line() -> bool:
    """Under @hydra.main: did the user type `model=...` or `model.pretrained=...` (wins over a checkpoint's base)?"""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return bool(keys & {"model", "model.pretrained"})


def load_for_inference(cfg: Any, *, base_override: bool) -> TextEncoderFineTuner:
    """The model of `cfg.model` + `cfg.checkpoint`, ready to sample on `cfg.device` with `cfg.threads`."""
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    _check_attention_slicing(cfg.attention_slicing)  # before the model loads
    fast = FastSampling.from_config(cfg.dtype, cfg.deep_cache, device)
    model = build_model(cfg.model, cfg.checkpoint, base_override=base_override)
    prepare_for_inference(model, device, cfg.attention_slicing)
    fast_sampling.install(model, fast)
    return model


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A sampler by name, built from the base model's scheduler config (betas, offsets, prediction type)."""
    _require(name in SCHEDULERS, f"scheduler={name!r}: expected one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)


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


def generate(
    model: TextEncoderFineTuner,
    settings: SampleSettings,
    *,
    checkpoint: str | None = None,
    progress: bool = False,
    on_step: Callable[..., dict] | None = None,
) -> list[Image.Image]:
    """Render `num_images` per prompt (seeds seed, seed+1, ...); each image's `.info` holds its metadata.

    The module's train/eval mode is restored afterwards, so the training callback can call this on the
    live module. Noise comes from per-image CPU generators: the same seed gives the same image whatever
    the batch size or device. The options `load_for_inference` installed (bf16 autocast, DeepCache) apply
    to each pipeline call. `on_step` is diffusers' `callback_on_step_end(pipe, step, timestep, kwargs)`.
    """
    validate_settings(settings)
    warn_if_truncated(model.tokenizer, (*settings.prompts, settings.negative_prompt))
    seed = random.SystemRandom().randint(0, MAX_SEED) if settings.seed is None else settings.seed
    height, width = settings.height or native_size(model), settings.width or native_size(model)
    jobs = [(prompt, seed + i) for prompt in settings.prompts for i in range(settings.num_images)]
    fast = fast_sampling.installed(model)
    base_info = {
        "negative_prompt": settings.negative_prompt,
        "steps": settings.steps,
        "scheduler": settings.scheduler,
        "guidance_scale": settings.guidance_scale,
        "height": height,
        "width": width,
        "checkpoint": checkpoint or "none",
        "model": model.hparams.get("pretrained", ""),
        "precision": "bf16-autocast" if fast and fast.autocast_bf16 else DTYPE_NAMES[model.unet.dtype],
        "deep_cache": fast.deep_cache if fast else "off",
    }
    was_training = model.training
    model.eval()
    try:
        pipe = build_pipeline(model, settings.scheduler)
        pipe.set_progress_bar_config(disable=not progress)
        negative = encode_prompts(model, [settings.negative_prompt])  # (1, 77, D)
        images: list[Image.Image] = []
        for start in range(0, len(jobs), settings.batch_size):
            batch = jobs[start : start + settings.batch_size]
            with fast.active(model.unet) if fast else nullcontext():
                output = pipe(
                    prompt_embeds=encode_prompts(model, [prompt for prompt, _ in batch]),  # (B, 77, D)
                    negative_prompt_embeds=negative.expand(len(batch), -1, -1),
                    height=height,
                    width=width,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(s) for _, s in batch],
                    output_type="pil",
                    callback_on_step_end=on_step,
                )
            for (prompt, image_seed), image in zip(batch, output.images, strict=True):
                image.info.update({**base_info, "prompt": prompt, "seed": image_seed})
                images.append(image)
    finally:
        model.train(was_training)
    return images


# --- files -----------------------------------------------------------------------------------------
def png_bytes(image: Image.Image) -> bytes:
    """PNG with the settings in text chunks; nothing time-dependent, so same pixels -> same bytes."""
    info = PngInfo()
    for key in METADATA_KEYS:
        if key in image.info:
            info.add_text(key, str(image.info[key]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def slugify(text: str, max_length: int = 60) -> str:
    """File-name-safe form of a prompt: 'A dog, running!' -> 'a-dog-running'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "prompt"


def make_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images (all one size) in rows of `columns` (default: a near-square grid)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def save_images(images: Sequence[Image.Image], out_dir: str | Path) -> list[Path]:
    """One `<prompt slug>-<seed>.png` per image, plus a `grid-...png` when there are several."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = out / f"{slugify(image.info['prompt'])}-{image.info['seed']}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    if len(images) > 1:
        grid = make_grid(images)
        first = images[0].info
        grid.info.update({key: first[key] for key in METADATA_KEYS if key in first})
        grid.info["prompt"] = "\n".join(dict.fromkeys(image.info["prompt"] for image in images))
        grid.info["seed"] = ",".join(str(image.info["seed"]) for image in images)
        path = out / f"grid-{slugify(first['prompt'])}-{first['seed']}-{len(images)}.png"
        path.write_bytes(png_bytes(grid))
        paths.append(path)
    return paths
