"""Captioned-image datasets over files on disk or a `datasets` table, and the collate that tokenizes."""

import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from ldm.data.images import ImageTransform
from ldm.data.layouts import Sample

# What a bad image can raise while decoding; anything else is a bug and should surface.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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


class CaptionDataset(Dataset):
    """One item per image: {"pixel_values": (3, R, R) in [-1, 1], "caption": str}.

    train: a random caption of the image on every read (so epochs differ) and caption dropout to ""
    (so classifier-free guidance keeps an unconditional branch); otherwise always the first caption.
    An image that fails to decode is replaced by the next one (deterministic) with a warning.
    """

    def __init__(self, source: Source, transform: ImageTransform, *, train: bool, caption_dropout: float) -> None:
        self.source = source
        self.transform = transform
        self.train = train
        self.caption_dropout = caption_dropout

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        n = len(self.source)
        for i in ((index + k) % n for k in range(n)):
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
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),  # (B, 3, R, R) float32
            "input_ids": input_ids,
            "captions": captions,
        }
