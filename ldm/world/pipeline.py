"""Full diffusers folders for the shapes world: stage 2's random starting point and the trained base.

Why folders: stage 2 and stage 3 then load their model through `model.pretrained=PATH`, the code path
SD1.5 takes, and `StableDiffusionPipeline.from_pretrained(PATH)` works on the result as on any SD folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.errors import ConfigError, require
from ldm.files import write_folder
from ldm.generation.schedulers import make_scheduler
from ldm.training.module import TextEncoderFineTuner
from ldm.world.vocab import BASE, NEW, caption_token_ids

PIPELINE_PARTS = ("model_index.json", "vae", "unet", "text_encoder", "tokenizer", "scheduler")


def is_pipeline_folder(path: str | os.PathLike) -> bool:
    return all((Path(path) / part).exists() for part in PIPELINE_PARTS)


def save_pipeline(path: str | os.PathLike, *, vae, unet, text_encoder, tokenizer, scheduler) -> Path:
    """Write the five components as one diffusers folder, atomically (a reader never sees half of it)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler("ddim", scheduler.config),  # what the folder samples with
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return write_folder(path, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), replace=True)


def write_init_pipeline(
    path: str | os.PathLike,
    *,
    vae: str,
    unet: Mapping[str, Any],
    text_encoder: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    max_length: int,
    seed: int,
) -> str:
    """Stage 2's starting point: the stage-1 VAE, a random U-Net and CLIP text tower (real CLIP vocabulary),
    the offline CLIP tokenizer reading `max_length` tokens, and the training noise schedule. The U-Net's
    `in_channels`, `out_channels` and `sample_size` follow the VAE's latents, so they are set once (stage 1).

    Rewritten on every call (about a second, seeded, so identical for identical arguments): a retrained VAE
    or a changed architecture can never meet a stale folder.
    """
    if not (Path(vae) / "config.json").is_file():
        raise ConfigError(
            f"model.init.vae={vae!r}: expected the stage-1 VAE folder; run `python train.py experiment=shapes_vae` "
            "first (or `make demo`, which runs every stage)"
        )
    vae_model = AutoencoderKL.from_pretrained(vae)
    latent = vae_model.config  # the U-Net's input is the VAE's latent: its channels and side
    side = latent.sample_size // 2 ** (len(latent.block_out_channels) - 1)
    torch.manual_seed(seed)
    unet_model = UNet2DConditionModel(
        **unet, in_channels=latent.latent_channels, out_channels=latent.latent_channels, sample_size=side
    )
    torch.manual_seed(seed)
    text_model = CLIPTextModel(CLIPTextConfig(**text_encoder))
    save_pipeline(
        path,
        vae=vae_model,
        unet=unet_model,
        text_encoder=text_model,
        tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR, model_max_length=max_length),
        scheduler=make_scheduler("ddim", scheduler),
    )
    return str(path)


def fresh_base_module(*, init: Mapping[str, Any], **kwargs: Any) -> TextEncoderFineTuner:
    """Stage 2's module: `TextEncoderFineTuner` (unchanged) on a freshly written starting folder.

    `init` holds `write_init_pipeline` arguments; `kwargs` are TextEncoderFineTuner's, with `pretrained`
    naming where the starting folder goes.
    """
    write_init_pipeline(kwargs["pretrained"], **init)
    return TextEncoderFineTuner(**kwargs)


def require_pipeline(path: str) -> str:
    """`path` if it is a complete diffusers folder, else a ConfigError that says which stage makes it."""
    if not is_pipeline_folder(path):
        raise ConfigError(
            f"model.pretrained={path!r}: expected the stage-2 base model folder; run "
            "`python train.py experiment=shapes_base` first (or `make demo`, which runs every stage)"
        )
    return path


def finetuner(*, new_words_from_mean: bool = False, **kwargs: Any) -> TextEncoderFineTuner:
    """Stage 3's module: `TextEncoderFineTuner` (unchanged) on the stage-2 folder; a clear error if it is missing.

    new_words_from_mean: first give every token that only new-vocabulary captions use the mean embedding of
    the tokens base captions use (`start_new_words_from_mean`). It needs the base's own text encoder (a
    separately given one, such as stage 3's export that the reward stage refines, trained those rows
    already) and no LoRA adapter (peft copies the embedding rows it trains when it wraps the encoder).
    """
    if new_words_from_mean:
        given = kwargs.get("text_encoder")
        require(
            given is None,
            f"model.new_words_from_mean=true with model.text_encoder={given!r}: expected model.text_encoder=null "
            "(a given encoder trained those rows already) or model.new_words_from_mean=false",
        )
        require(
            not kwargs.get("adapter"),
            "model.new_words_from_mean=true with a LoRA adapter: expected model.adapter=null or "
            "model.new_words_from_mean=false (peft copies the rows it trains when it wraps the encoder, before this)",
        )
    require_pipeline(kwargs["pretrained"])
    module = TextEncoderFineTuner(**kwargs)
    if new_words_from_mean:
        start_new_words_from_mean(module.text_encoder, module.tokenizer)
    return module


def start_new_words_from_mean(text_encoder: Any, tokenizer: Any, noise: float = 0.01, seed: int = 0) -> list[int]:
    """Set the embedding rows of tokens only the new vocabulary uses to the base tokens' mean (+ small noise).

    Why: stage 2 trains its text encoder from scratch on base captions, so every other row keeps its random
    initialisation, which a real pretrained encoder never has and the frozen U-Net reads as something. The
    mean says nothing, like transformers' `resize_token_embeddings(mean_resizing=True)` for added tokens; the
    noise keeps the rows apart. Opt-in: on world seed 2 it taught the one new word stage 3 never learned from
    its random row, on seed 1 it did not, and seed 0 lost base shape (docs/preservation.md). Returns the ids.
    """
    embeddings = text_encoder.get_input_embeddings().weight
    base_ids = caption_token_ids(BASE, tokenizer)
    new_ids = sorted(caption_token_ids(NEW, tokenizer) - base_ids)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mean = embeddings[sorted(base_ids)].mean(dim=0)
        spread = noise * torch.randn(len(new_ids), embeddings.shape[1], generator=generator)
        embeddings[new_ids] = (mean + spread).to(embeddings.dtype)
    return new_ids
