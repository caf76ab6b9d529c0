"""CLIP backbones that score generated images: loaded by hub id or folder, or built tiny and random offline.

Why an adapter around `CLIPModel`: torchmetrics 1.9's `CLIPScore` divides what `get_image_features` /
`get_text_features` return by its norm, but transformers 5 returns a `BaseModelOutputWithPooling` there
(torchmetrics issue #3407, no fixed release yet). `CLIPScore` accepts a callable returning any
(model, processor) pair with those two methods, so the adapter hands it plain (B, d) tensors. The same
callable also lets ids torchmetrics does not list (the LAION models) and local folders through.

Why the PIL image processor: transformers 5's default CLIP image processor needs torchvision, which does
not install beside this torch; the PIL one is what transformers falls back to anyway, and using it
everywhere keeps scores comparable between machines with and without torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, try_to_load_from_cache
from omegaconf import OmegaConf
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.errors import UserError
from ldm.files import write_folder


class BackboneLoadError(UserError, RuntimeError):
    """A CLIP backbone (hub id or folder) that could not be loaded."""


def _tensor(output: Any) -> torch.Tensor:
    """Projected features whether transformers returns a tensor (4.x) or an output object (5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipAdapter(nn.Module):
    """`CLIPModel` whose feature methods return (B, projection_dim) tensors, as torchmetrics expects."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.config = model.config  # CLIPScore reads text_config.max_position_embeddings

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _offline() -> bool:
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def check_backbone(name: str, source: str) -> None:
    """Raise `BackboneLoadError` now, before generating (minutes to hours), for a backbone that can't load:
    a folder without a saved model, or, offline, a hub id that is not in the Hugging Face cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneLoadError(f"backbones.{name}={source!r}: no config.json there (a CLIPModel save_pretrained)")
        return
    if os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1:
        raise BackboneLoadError(f"backbones.{name}={source!r}: folder not found")
    if _offline() and not isinstance(try_to_load_from_cache(source, "config.json"), str):
        raise BackboneLoadError(
            f"backbones.{name}={source!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "download it once, or give a folder"
        )


def load_backbone(source: str) -> tuple[ClipAdapter, CLIPProcessor]:
    """(adapter, processor) of a hub id or a folder holding a `CLIPModel` and its tokenizer/processor files."""
    try:
        model = CLIPModel.from_pretrained(source)
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessorPil.from_pretrained(source),
            tokenizer=AutoTokenizer.from_pretrained(source),
        )
    except (OSError, ValueError) as err:
        hint = "" if Path(source).expanduser().is_dir() else " (a hub id needs the network once, or give a folder)"
        raise BackboneLoadError(f"could not load the CLIP backbone {source!r}: {err}{hint}") from None
    return ClipAdapter(model), processor


class ClipImageFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> (B, d) CLIP image features, as torchmetrics' FID takes a custom network."""

    def __init__(self, adapter: ClipAdapter, processor: CLIPProcessor) -> None:
        super().__init__()
        self.adapter = adapter
        self.processor = processor
        self.num_features = int(adapter.config.projection_dim)  # spares FID its dummy forward

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=[im.cpu() for im in images], return_tensors="pt")["pixel_values"]
        device = next(self.adapter.parameters()).device
        return self.adapter.get_image_features(pixels.to(device)).float().cpu()  # FID keeps its sums on the CPU


# --- offline: tiny random backbones --------------------------------------------------------------------
def tiny_clip(seed: int) -> tuple[CLIPModel, CLIPProcessor]:
    """A 2-layer CLIP (text and 32 px vision towers) over the real vocabulary, random weights, seeded."""
    torch.manual_seed(seed)
    text = {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR),
    )
    return model, processor


def ensure_tiny_clip(path: str | os.PathLike, seed: int = 0) -> str:
    """Return `path`, writing a tiny random CLIP folder there first (atomically) if it is not complete."""
    path = Path(path)
    if not (path / "config.json").is_file():

        def save(tmp: Path) -> None:
            model, processor = tiny_clip(int(seed))
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)

        write_folder(path, save, replace=False)
    return str(path)


def register_resolvers() -> None:
    """`${tiny_clip:PATH,SEED}` (conf/backbones/tiny.yaml) writes a tiny random CLIP at PATH once."""
    if not OmegaConf.has_resolver("tiny_clip"):
        OmegaConf.register_new_resolver("tiny_clip", ensure_tiny_clip)
