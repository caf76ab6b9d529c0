"""The held-out caption set and its real images, read through the project's own DataModule.

Why the DataModule: `data=` then means what it means for training (Flickr8k in any folder layout, a hub
table, the shapes world), and the official test split (`Flickr_8k.testImages.txt`) is the one training
never sees. Only the split's source is used (names, captions, images), never its batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from ldm.data.dataset import CaptionDataset, Source
from ldm.data.images import ImageTransform
from ldm.errors import ConfigError
from ldm.training.run import instantiate_or_explain


@dataclass(frozen=True)
class HeldOut:
    """Prompts (caption `caption` of the split's first `count` images, in split-file order) and the split."""

    description: str
    prompts: tuple[str, ...]
    source: Source

    def real_images(self, size: int, limit: int | None, batch_size: int) -> Iterator[torch.Tensor]:
        """The split's images (the first `limit`; None: all) as uint8 (B, 3, size, size) batches: shorter
        side resized and centre-cropped as training does, to the generated images' size."""
        transform = ImageTransform(size, random_crop=False, random_flip=False)
        count = len(self.source) if limit is None else min(limit, len(self.source))
        for start in range(0, count, batch_size):
            batch = []
            for i in range(start, min(start + batch_size, count)):
                with self.source.image(i) as image:
                    batch.append(transform(image))  # (3, size, size) in [-1, 1]
            yield to_uint8(torch.stack(batch))


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 255] uint8, rounded as PIL would store them."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def pil_to_uint8(images: list) -> torch.Tensor:
    """PIL images of one size -> uint8 (B, 3, H, W)."""
    array = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def load_held_out(data_cfg: DictConfig, split: str, count: int, caption: int) -> HeldOut:
    """Build the DataModule of `data_cfg` and read `count` prompts from `split`; ConfigError if it can't serve."""
    if data_cfg.get("hub") is not None and data_cfg.layout == "hub" and data_cfg.hub.streaming:
        raise ConfigError("data.hub.streaming=true: evaluation reads images by index; set data.hub.streaming=false")
    try:
        datamodule = instantiate_or_explain(data_cfg, tokenizer=None)  # no batches are made: no tokenizer needed
        datamodule.prepare_data()
        datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    except (FileNotFoundError, ValueError) as err:  # a missing folder or a malformed caption file
        raise ConfigError(f"data: {err}") from None
    dataset = datamodule.splits[split]
    if not isinstance(dataset, CaptionDataset):
        raise ConfigError(f"data: the {split} split is a {type(dataset).__name__}; evaluation reads images by index")
    source = dataset.source
    where = data_cfg.hub.name if data_cfg.layout == "hub" else str(data_cfg.root)
    if len(source) < count:
        raise ConfigError(f"prompts.count={count}: the {split} split of {where} has only {len(source)} usable images")
    prompts = []
    for i in range(count):
        captions = source.captions(i)
        if not 0 <= caption < len(captions):
            raise ConfigError(f"prompts.caption={caption}: image {source.name(i)} has {len(captions)} captions")
        prompts.append(captions[caption])
    return HeldOut(f"{split} split of {where}", tuple(prompts), source)
