"""Flickr8k as a LightningDataModule: batches of pixels, token ids and captions for text-encoder tuning.

Built by `hydra.utils.instantiate(cfg.data, tokenizer=tokenizer)`; every default lives in
conf/data/flickr8k.yaml, so all parameters here are required.
"""

from collections.abc import Mapping
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from ldm.data.dataset import CaptionCollator, CaptionDataset, FileSource
from ldm.data.hub import HubConfig, HubSource, HubStream, load_hub_split, load_hub_stream
from ldm.data.images import ImageTransform
from ldm.data.layouts import SPLITS, find_layout, load_folder
from ldm.data.resumable import ResumableDataLoader
from ldm.data.synthetic import write_captioned_images
from ldm.seeds import global_seed

LAYOUTS = ("auto", "original", "kaggle", "hub")
GENERATE_KEYS = {"num_images", "image_size", "seed", "layout"}
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class Flickr8kDataModule(L.LightningDataModule):
    """Batches: {"pixel_values": (B, 3, R, R) float32 in [-1, 1], "input_ids": (B, max_length) int64,
    "captions": list[str]}. Splits: train (shuffled, augmented, random caption), val and test (fixed).

    cache_latents: batches carry "latent_moments" (B, 2C, R/8, R/8) instead of pixels, read from a disk
    cache under `latent_cache_dir` that the `CacheLatents` callback fills with the module's own frozen VAE
    when fit/validate/test starts (`ldm.data.latent_cache`). Needs a centre crop and an indexable split (not a stream).

    layout: original | kaggle | hub, or auto (detects original/kaggle from the files in `root`).
    generate: None, or write_captioned_images() arguments: `prepare_data` then writes a generated set
    at `root` when it holds no data yet (the offline experiment).
    """

    def __init__(
        self,
        *,
        tokenizer,
        root: str | Path,
        layout: str,
        resolution: int,
        center_crop: bool,
        random_flip: bool,
        batch_size: int,
        num_workers: int,
        caption_dropout: float,
        val_fraction: float,
        split_seed: int,
        max_length: int,
        hub: Mapping | None,
        generate: Mapping | None,
        cache_latents: bool,
        latent_cache_dir: str | Path,
        preserve_prompts: str | list[str] | None,
    ) -> None:
        super().__init__()
        _check_config(layout, resolution, batch_size, num_workers, caption_dropout, val_fraction, max_length)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.root = Path(root)
        self.layout = layout
        self.hub = _hub_config(hub) if layout == "hub" else None
        if cache_latents:
            _check_latent_cache(center_crop, self.hub)
        self.cache_latents = cache_latents
        self.latent_cache_dir = Path(latent_cache_dir)
        # a data setting kept here for reference; preservation reads it as ${data.preserve_prompts}
        self.preserve_prompts = preserve_prompts
        self.generate = _generate_config(generate, layout)
        self.collate = CaptionCollator(tokenizer, max_length)
        self.splits: dict[str, CaptionDataset | HubStream] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_resume: dict | None = None

    def prepare_data(self) -> None:
        """Runs once per node: writes the generated set, or fetches the hub dataset into the cache."""
        if self.generate is not None and find_layout(self.root) is None:
            write_captioned_images(self.root, **self.generate)
        if self.hub is not None and not self.hub.streaming:  # a stream downloads nothing up front
            for split in SPLITS:
                load_hub_split(self.hub, split)

    def setup(self, stage: str | None = None) -> None:
        needed = [s for s in _STAGE_SPLITS.get(stage, SPLITS) if s not in self.splits]
        if not needed:
            return
        hp = self.hparams
        if self.hub is not None and self.hub.streaming:
            self._setup_streams(needed)
            return
        if self.hub is not None:
            sources = {s: HubSource(load_hub_split(self.hub, s), self.hub, s) for s in needed}
        else:
            samples = load_folder(
                self.root, self.layout, val_fraction=hp.val_fraction, seed=hp.split_seed, splits=needed
            )
            sources = {s: FileSource(v) for s, v in samples.items()}
        for split, source in sources.items():
            train = split == "train"
            transform = ImageTransform(
                hp.resolution, random_crop=train and not hp.center_crop, random_flip=train and hp.random_flip
            )
            self.splits[split] = CaptionDataset(
                source, transform, train=train, caption_dropout=hp.caption_dropout if train else 0.0
            )
            self.splits[split].needs_latents = self.cache_latents
        if "train" in needed and len(self.splits["train"]) == 0:
            raise ValueError(f"Flickr8k train split at {self.hub.name if self.hub else self.root} has no usable images")

    def _setup_streams(self, needed: list[str]) -> None:
        """Streamed hub splits; each DDP rank reads its own part of every split."""
        hp = self.hparams
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        for split in needed:
            train = split == "train"
            transform = ImageTransform(
                hp.resolution, random_crop=train and not hp.center_crop, random_flip=train and hp.random_flip
            )
            self.splits[split] = HubStream(
                load_hub_stream(self.hub, split),
                self.hub,
                split,
                transform,
                train=train,
                caption_dropout=hp.caption_dropout if train else 0.0,
                seed=global_seed(),
                rank=rank,
                world_size=world,
            )

    def latent_splits(self, stage: str) -> dict[str, CaptionDataset]:
        """The splits `stage` reads whose latents come from the cache (all of them when `cache_latents`)."""
        if not self.cache_latents:
            return {}
        self.setup(stage)
        return {
            s: self.splits[s]
            for s in _STAGE_SPLITS.get(stage, SPLITS)
            if isinstance(self.splits.get(s), CaptionDataset)
        }

    def state_dict(self) -> dict:
        """The train loader's place in its epoch (saved in every checkpoint).

        Why here and not only on the loader (Lightning also saves a stateful loader's state): Lightning
        restores loader state only if the loader is built after the checkpoint is read, but
        `configure_optimizers` asks for `estimated_stepping_batches`, which builds it earlier. The
        DataModule's state is restored before either, so the loader starts where the killed run stopped.
        """
        return {} if self._train_loader is None else {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._train_resume = state.get("train_loader")
        if self._train_loader is not None and self._train_resume is not None:
            self._train_loader.load_state_dict(self._train_resume)
            self._train_resume = None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, *, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        workers = self.hparams.num_workers
        common = {"num_workers": workers, "collate_fn": self.collate, "persistent_workers": workers > 0}
        if isinstance(self.splits[split], HubStream):  # order comes from the stream's shuffle buffer
            return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, **common)
        if split == "train":  # order and per-item randomness fixed by (seed, epoch): exact mid-epoch resume
            self._train_loader = ResumableDataLoader(
                self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle, seed=global_seed(), **common
            )
            if self._train_resume is not None:  # applied once: a loader built later starts its epoch afresh
                self._train_loader.load_state_dict(self._train_resume)
                self._train_resume = None
            return self._train_loader
        return DataLoader(self.splits[split], batch_size=self.hparams.batch_size, shuffle=shuffle, **common)


def _check_config(
    layout: str,
    resolution: int,
    batch_size: int,
    num_workers: int,
    caption_dropout: float,
    val_fraction: float,
    max_length: int,
) -> None:
    """Config errors stop here, at instantiate time, before any model loads."""
    problems = []
    if layout not in LAYOUTS:
        problems.append(f"layout={layout!r} (expected one of {', '.join(LAYOUTS)})")
    for key, value in (("resolution", resolution), ("batch_size", batch_size), ("max_length", max_length)):
        if value < 1:
            problems.append(f"{key}={value} (expected >= 1)")
    if num_workers < 0:
        problems.append(f"num_workers={num_workers} (expected >= 0)")
    if not 0.0 <= caption_dropout <= 1.0:
        problems.append(f"caption_dropout={caption_dropout} (expected in [0, 1])")
    if not 0.0 <= val_fraction < 0.5:
        problems.append(f"val_fraction={val_fraction} (expected in [0, 0.5): val and test take it each)")
    if problems:
        raise ValueError("bad data config: " + "; ".join(problems))


def _check_latent_cache(center_crop: bool, hub: HubConfig | None) -> None:
    """Refuse what can't be cached, at instantiate time, with the reason."""
    if not center_crop:
        raise ValueError(
            "data.cache_latents=true needs data.center_crop=true: a random crop differs every epoch, so its "
            "latents can't be cached (set data.cache_latents=false to keep random crops)"
        )
    if hub is not None and hub.streaming:
        raise ValueError("data.cache_latents=true needs an indexable split: set data.hub.streaming=false")


def _hub_config(hub: Mapping | None) -> HubConfig:
    if hub is None:
        raise ValueError("layout=hub needs a `hub` block (name, image_column, caption_columns, *_split)")
    try:
        return HubConfig(**{**hub, "caption_columns": tuple(hub["caption_columns"])})
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad data.hub block {dict(hub)}: {e}") from e


def _generate_config(generate: Mapping | None, layout: str) -> dict | None:
    if generate is None:
        return None
    if layout == "hub":
        raise ValueError("data.generate writes a folder layout; it cannot be combined with layout=hub")
    if set(generate) != GENERATE_KEYS:
        raise ValueError(f"data.generate needs exactly the keys {sorted(GENERATE_KEYS)}, got {sorted(generate)}")
    return dict(generate)
