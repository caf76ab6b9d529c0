"""The single-file checkpoint (`model.safetensors`) and the text encoder alone (`text_encoder.safetensors`).

Why these two: AUTOMATIC1111, ComfyUI, Forge, InvokeAI and stable-diffusion.cpp load a whole SD1.x model from
one file in the original CompVis key layout, and ComfyUI's CLIP loader reads the encoder alone in the same
layout (`cond_stage_model.transformer.*`). Keys come from `ldm.export.compvis_keys`, checked against diffusers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldm.errors import expect
from ldm.export.compvis_keys import check_round_trip, text_key, to_compvis
from ldm.training.checkpoint_io import atomic_save_safetensors

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODEL_FILE = "model.safetensors"
TEXT_ENCODER_FILE = "text_encoder.safetensors"


def single_file_dtype(name: str, key: str = "callbacks.tool_files.single_file_dtype") -> torch.dtype:
    """`callbacks.tool_files.single_file_dtype` (or the CLI's `--dtype`) as a torch dtype, or an error naming them."""
    expect(name in DTYPES, key, name, f"one of {list(DTYPES)}")
    return DTYPES[name]


def skip_reason(text_encoder_source: str | None, projection: nn.Module | None) -> str | None:
    """Why this run's model has no SD1.x single file (None: it has one).

    A separate text tower (`model.text_encoder`, e.g. model=clip_b32) or a learned projection is not SD1.5's
    architecture: the tools would build SD1.5's own CLIP ViT-L/14 and fail on (or silently drop) the weights.
    """
    if projection is not None:
        return "the text tower feeds the U-Net through a learned projection (model.projection=true), which SD1.x lacks"
    if text_encoder_source is not None:
        return f"model.text_encoder={text_encoder_source!r} replaces SD1.x's own CLIP text encoder"
    return None


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in tensors.items()}


def _metadata(base: str, dtype: torch.dtype, title: str) -> dict[str, str]:
    """safetensors header strings: the Stability model-spec keys the UIs show, and where the weights came from."""
    return {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.title": title,
        "ldm.base": base,
        "ldm.dtype": str(dtype).removeprefix("torch."),
    }


def single_file_tensors(unet: Any, vae: Any, text_encoder: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """U-Net, VAE and text encoder in the CompVis layout at `dtype`, after diffusers has read the keys back."""
    unet_sd, vae_sd = unet.state_dict(), vae.state_dict()
    compvis = to_compvis(unet_sd, unet.config, vae_sd, vae.config, text_encoder.state_dict())
    check_round_trip(compvis, unet_sd, unet.config, vae_sd, vae.config)
    return _cast(compvis, dtype)


def write_single_file(
    path: Path, unet: Any, vae: Any, text_encoder: nn.Module, *, dtype: torch.dtype, base: str, title: str
) -> Path:
    """Write `model.safetensors` (atomic: a kill leaves no half file under the final name)."""
    tensors = single_file_tensors(unet, vae, text_encoder, dtype)
    size_gb = sum(t.numel() * t.element_size() for t in tensors.values()) / 1e9
    log.info("writing %s: the whole SD1.x model at %s, %.2f GB of disk", path, str(dtype)[6:], size_gb)
    atomic_save_safetensors(tensors, path, _metadata(base, dtype, title))
    return path


def text_encoder_tensors(text_encoder: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The encoder's weights under `cond_stage_model.transformer.text_model.*`."""
    return _cast({text_key(k): v for k, v in text_encoder.state_dict().items()}, dtype)


def write_text_encoder(path: Path, text_encoder: nn.Module, *, dtype: torch.dtype, base: str, title: str) -> Path:
    """Write `text_encoder.safetensors` (atomic)."""
    atomic_save_safetensors(text_encoder_tensors(text_encoder, dtype), path, _metadata(base, dtype, title))
    return path
