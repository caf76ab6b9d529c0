"""The Flickr8k DataModule over the shapes world: it writes the world first, then reads it unchanged.

Why a subclass: the world has more knobs than the Flickr8k generator (two vocabularies, a mixing ratio,
jitter) and writes several Flickr8k folders at once; reading them is left entirely to
`Flickr8kDataModule`, so the world goes through the same loading path as the real data. `generate`
keeps its Flickr8k meaning (what to render when the folder is missing); `world` adds the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ldm.data.datamodule import Flickr8kDataModule
from ldm.world.generator import VOCABULARY_ROOTS, ensure_world


class ShapesWorldDataModule(Flickr8kDataModule):
    """`Flickr8kDataModule` at `<world.root>/<vocabulary>`; `prepare_data` writes the world if missing.

    `generate` (num_images, image_size, seed, layout) and `world` (root and the other
    `ldm.world.generator.write_world` arguments) describe the world; every other argument is the Flickr8k
    DataModule's own (conf/data/shapes.yaml extends conf/data/flickr8k.yaml).
    """

    def __init__(self, *, world: Mapping[str, Any], vocabulary: str, **kwargs: Any) -> None:
        if vocabulary not in VOCABULARY_ROOTS:
            raise ValueError(f"data.vocabulary={vocabulary!r}: expected one of {', '.join(VOCABULARY_ROOTS)}")
        super().__init__(**kwargs)
        self.world = dict(world)
        self.vocabulary = vocabulary

    def prepare_data(self) -> None:
        world = dict(self.world)
        root = Path(world.pop("root"))
        if self.generate is not None and self.root.resolve().parent == root.resolve():  # tests point elsewhere
            ensure_world(root, **self.generate, **world)
        super().prepare_data()
