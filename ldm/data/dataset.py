"""Captioned-image datasets over files on disk or a `datasets` table, and the collate that tokenizes."""

import hashlib
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.images import DECODE_ERRORS, ImageTransform
from ldm.data.latent_cache import LatentCacheError, LatentLookup, file_digest
from ldm.data.layouts import Sample

# What a bad image can raise while decoding; anything else is a bug and should surface.


class Source(Protocol):
    """Indexable (image, captions) pairs, so one dataset class serves folders and hub tables."""

    def __len__(self) -> int: ...
    def name(self, index: int) -> str: ...
    def captions(self, index: int) -> Sequence[str]: ...
    def image(self, index: int) -> Image.Image: ...


class FileSource:
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return self.samples[index].image.name

    def captions(self, index: int) -> Sequence[str]:
        return self.samples[index].captions

    def image(self, index: int) -> Image.Image:
        return Image.open(self.samples[index].image)

    def digest(self, index: int) -> str:
        """SHA-256 of the image file: the latent cache's key for its content (no decoding needed)."""
        return file_digest(self.samples[index].image)


class CaptionDataset(Dataset):
    """One item per image: {"pixel_values": (3, R, R) in [-1, 1], "caption": str}, or with cached latents
    (`latents` set by `ldm.data.latent_cache.prepare`) {"latent_moments": (2C, R/8, R/8), "caption": str}.

    train: a random caption of the image on every read (so epochs differ) and caption dropout to ""
    (so classifier-free guidance keeps an unconditional branch); otherwise always the first caption.
    An image that fails to decode is replaced by the next one (deterministic) with a warning. A cached
    item draws its flip with the same random number the image transform would, so a run sees the same
    flips and captions with or without the cache.
    """

    def __init__(self, source: Source, transform: ImageTransform, *, train: bool, caption_dropout: float) -> None:
        self.source = source
        self.transform = transform
        self.train = train
        self.caption_dropout = caption_dropout
        self.latents: LatentLookup | None = None
        self.needs_latents = False  # set by a DataModule with cache_latents: pixels would then be a silent miss

    def __len__(self) -> int:
        return len(self.source)

    def image_digest(self, index: int) -> str:
        """The image's content hash: its file's bytes, or its decoded pixels for sources without files."""
        if hasattr(self.source, "digest"):
            return self.source.digest(index)
        with self.source.image(index) as image:
            rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()

    def pixels(self, index: int, *, flip: bool) -> torch.Tensor:
        """(3, R, R) centre crop, flipped or not: what the latent cache encodes (raises DECODE_ERRORS)."""
        centre = ImageTransform(self.transform.resolution, random_crop=False, random_flip=False)
        with self.source.image(index) as image:
            pixels = centre(image)
        # flipping the tensor equals flipping the cropped image (a permutation of the same pixels)
        return torch.from_numpy(np.ascontiguousarray(pixels.numpy()[:, :, ::-1])) if flip else pixels

    def __getitem__(self, index: int) -> dict:
        if self.needs_latents and self.latents is None:
            raise LatentCacheError(
                "data.cache_latents=true but no latents were attached to this split: the trainer needs the "
                "callbacks.latent_cache callback (ldm.training.callbacks.CacheLatents), which fills the cache"
            )
        n = len(self.source)
        for i in ((index + k) % n for k in range(n)):
            if self.latents is not None:
                if not self.latents.has(i):
                    warnings.warn(
                        f"could not decode {self.source.name(i)} when the latent cache was filled; "
                        "using the next image instead",
                        stacklevel=2,
                    )
                    continue
                flip = self.transform.random_flip and bool(torch.rand(()) < 0.5)  # the transform's own draw
                moments = self.latents.get(i, flip)
                return {"latent_moments": moments, "caption": self._caption(self.source.captions(i))}
            try:
                with self.source.image(i) as image:
                    pixel_values = self.transform(image)  # (3, R, R)
            except DECODE_ERRORS as e:
                warnings.warn(
                    f"could not decode {self.source.name(i)} ({e}); using the next image instead",
                    stacklevel=2,
                )
                continue
            return {"pixel_values": pixel_values, "caption": self._caption(self.source.captions(i))}
        raise RuntimeError(f"none of the {n} images in this split could be decoded")

    def _caption(self, captions: Sequence[str]) -> str:
        if not self.train:
            return captions[0]
        if self.caption_dropout > 0 and bool(torch.rand(()) < self.caption_dropout):
            return ""
        return captions[int(torch.randint(len(captions), ()))]


class CaptionCollator:
    """Stacks pixels and tokenizes the batch's captions in one call (faster than per item).

    Tokenizing here, not in the model, keeps the LightningModule free of text handling.
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict]) -> dict:
        captions = [item["caption"] for item in items]
        input_ids = self.tokenizer(
            captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids  # (B, max_length) int64
        images = "latent_moments" if "latent_moments" in items[0] else "pixel_values"
        return {
            images: torch.stack([item[images] for item in items]),  # (B, 3, R, R) or (B, 2C, R/8, R/8) float32
            "input_ids": input_ids,
            "captions": captions,
        }
