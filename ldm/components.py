"""Load the diffusers components (`vae, unet, text_encoder, tokenizer, scheduler`) the same way for all.

Why one loader: SD1.5 from the hub, a local diffusers folder, and the tiny random model that tests use
all go through `from_pretrained` here, so what tests exercise is the path users run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ldm.errors import expect

COMPONENT_NAMES = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
TRAINABLE_CHOICES = ("text_encoder", "unet")  # what `model.trainable` may name


def check_trainable(trainable: Iterable[str]) -> list[str]:
    """`model.trainable` as a list, or a `ConfigError` naming the choices."""
    names = list(trainable)
    expect(
        bool(names) and set(names) <= set(TRAINABLE_CHOICES),
        "model.trainable",
        names,
        f"a non-empty subset of {list(TRAINABLE_CHOICES)}",
    )
    return names


def _text_tower_kwargs(source: str) -> dict[str, Any]:
    """A separate text tower may be a diffusers folder (with `text_encoder/`) or a plain CLIP repo."""
    path = Path(source)
    if path.is_dir() and (path / "text_encoder").is_dir():
        return {"text_encoder": {"subfolder": "text_encoder"}, "tokenizer": {"subfolder": "tokenizer"}}
    return {"text_encoder": {}, "tokenizer": {}}


def load_frozen_parts(pretrained: str, *, revision: str | None = None, variant: str | None = None) -> dict[str, Any]:
    """The base's VAE and U-Net, the parts fine-tuning leaves as they are (also reloaded on their own when
    the OpenVINO engine, which replaced them, fails to compile: `ldm.generation.engine`)."""
    common = {"revision": revision, "variant": variant}
    return {
        "vae": AutoencoderKL.from_pretrained(pretrained, subfolder="vae", **common),
        "unet": UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", **common),
    }


def load_components(
    pretrained: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    text_encoder: str | None = None,
    prediction_type: str | None = None,
) -> dict[str, Any]:
    """Load the five SD components from a hub id or a local diffusers folder.

    `text_encoder` names a separate CLIP text tower (hub id or folder) that replaces the base model's
    own text encoder and tokenizer. `prediction_type` overrides the scheduler's (epsilon|v_prediction).
    The noise scheduler is a `DDPMScheduler` built from the folder's scheduler config: the training
    forward process is the same whichever sampler the folder names.
    """
    common = {"revision": revision}
    components: dict[str, Any] = {
        **load_frozen_parts(pretrained, revision=revision, variant=variant),
        "scheduler": DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **common),
    }
    if text_encoder is None:
        components["text_encoder"] = CLIPTextModel.from_pretrained(
            pretrained, subfolder="text_encoder", variant=variant, **common
        )
        components["tokenizer"] = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **common)
    else:
        kwargs = _text_tower_kwargs(text_encoder)
        components["text_encoder"] = CLIPTextModel.from_pretrained(text_encoder, **kwargs["text_encoder"])
        components["tokenizer"] = CLIPTokenizer.from_pretrained(text_encoder, **kwargs["tokenizer"])
    if prediction_type is not None:
        components["scheduler"].register_to_config(prediction_type=prediction_type)
    return components
