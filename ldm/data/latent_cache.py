"""A disk cache of VAE latents for training (`data.cache_latents=true`): each image is encoded once.

Why: the VAE is frozen, so encoding the same image every epoch repeats the same work (about 1,117 GFLOP
per image at 512 px, two thirds of a CFG U-Net call; docs/design.md). The cache stores the posterior's
moments (mean and log-variance, `(2C, R/8, R/8)` fp32), not one sample, so each step still draws a fresh
latent exactly as the uncached path does.

An entry is keyed by what decides its value: the VAE (a fingerprint of its config and weights, so another
base model, or the same path with other weights, gets other entries), the resolution, the crop (centre;
a random crop differs every epoch and is refused by the DataModule), the flip and the image's bytes, plus
a version of the pixel pipeline. Entries are safetensors files written atomically; each holds its key
fields and a SHA-256 of its tensor, checked on every read, so a truncated, corrupt or misplaced entry is
rebuilt, never trusted. A changed image, base or resolution is a different key: a miss.

When: the `CacheLatents` callback (`callbacks.latent_cache`, ldm/training/callbacks.py) calls `prepare`
when fit, validate or test starts, once the module is on its device with its final dtype, so the encoding
is done by the very VAE being trained with. Under DDP only global rank 0 encodes and writes; the others wait at a
barrier and then read (on several machines, `data.latent_cache_dir` must be on a filesystem they share).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ldm.data.images import DECODE_ERRORS

log = logging.getLogger(__name__)

# Bump when ImageTransform's pixels change (resize filter, draft decoding, scaling): old entries then miss.
PIXEL_PIPELINE_VERSION = "2"  # 2: EXIF orientation applied
TENSOR = "moments"
ENCODE_BATCH = 8  # images per VAE call while filling: encoder activations at 512 px are ≈ 0.5 GB an image


class LatentCacheError(RuntimeError):
    """A cache entry that was there when training started is gone or broken now."""


@dataclass(frozen=True)
class EntryKey:
    vae: str  # fingerprint of the VAE's config and weights
    resolution: int
    crop: str  # "center"
    flip: bool
    image: str  # SHA-256 of the image file (or of its decoded pixels)

    def fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in {**asdict(self), "pixels": PIXEL_PIPELINE_VERSION}.items()}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """SHA-256 over the VAE's config, parameter names, dtypes, shapes and bytes (≈ 0.3 s for SD's VAE)."""
    h = hashlib.sha256(json.dumps(dict(getattr(vae, "config", {})), sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class LatentCache:
    """Entries under `root/<vae fingerprint[:16]>/<digest[:2]>/<digest>.safetensors`."""

    def __init__(self, root: str | os.PathLike, shape: Sequence[int]) -> None:
        self.root = Path(root)
        self.shape = tuple(shape)  # (2C, R/8, R/8): what a valid entry holds

    def path(self, key: EntryKey) -> Path:
        digest = key.digest()
        return self.root / key.vae[:16] / digest[:2] / f"{digest}.safetensors"

    def load(self, key: EntryKey) -> torch.Tensor | None:
        """The entry's moments, or None when it is missing or fails any check (then it must be rebuilt)."""
        try:
            with safe_open(str(self.path(key)), framework="pt") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor(TENSOR)
        except (OSError, SafetensorError, KeyError, ValueError, RuntimeError):  # missing, truncated, not ours
            return None
        ok = (
            {k: meta.get(k) for k in key.fields()} == key.fields()
            and tensor.dtype == torch.float32
            and tuple(tensor.shape) == self.shape
            and meta.get("sha256") == _tensor_digest(tensor)
        )
        return tensor if ok else None

    def save(self, key: EntryKey, moments: torch.Tensor) -> None:
        """Write atomically (temp file beside it, then rename): readers never see half an entry."""
        moments = moments.detach().to("cpu", torch.float32).contiguous()
        if tuple(moments.shape) != self.shape:
            raise ValueError(f"latent moments of shape {tuple(moments.shape)}, expected {self.shape}")
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:12]}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({TENSOR: moments}, tmp, metadata={**key.fields(), "sha256": _tensor_digest(moments)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class LatentLookup:
    """What a dataset reads: the moments of item i (with or without flip), verified on every read."""

    def __init__(self, cache: LatentCache, keys: Sequence[dict[bool, EntryKey] | None]) -> None:
        self.cache = cache
        self.keys = list(keys)  # None: the image did not decode at fill time (the dataset skips it)

    def has(self, index: int) -> bool:
        return self.keys[index] is not None

    def get(self, index: int, flip: bool) -> torch.Tensor:
        keys = self.keys[index]
        if keys is None:
            raise LatentCacheError(f"item {index} has no latent entry (its image did not decode)")
        moments = self.cache.load(keys[flip])
        if moments is None:
            raise LatentCacheError(
                f"latent cache entry {self.cache.path(keys[flip])} was valid when training started but is missing "
                "or corrupt now (was the cache folder changed, or is it not shared by every machine?); "
                "restart to rebuild it"
            )
        return moments


# --- filling the cache from the module being trained -------------------------------------------------
def prepare(trainer: Any, vae: torch.nn.Module, stage: str) -> None:
    """Make sure every item of the DataModule's cached splits for `stage` has valid entries, then attach
    them to the datasets. Global rank 0 encodes and writes; every rank waits for it."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not getattr(datamodule, "cache_latents", False):
        return
    splits = datamodule.latent_splits(stage)  # {split: CaptionDataset}
    if not splits:
        return
    strategy = trainer.strategy
    fingerprint = strategy.broadcast(vae_fingerprint(vae) if trainer.is_global_zero else None, src=0)
    resolution = datamodule.hparams.resolution
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    cache = LatentCache(datamodule.latent_cache_dir, (2 * vae.config.latent_channels, *(2 * [resolution // factor])))
    for split, dataset in splits.items():
        flips = (False, True) if dataset.transform.random_flip else (False,)
        keys = None
        if trainer.is_global_zero:
            keys = _fill_split(cache, dataset, vae, fingerprint, resolution, flips, split)
        keys = strategy.broadcast(keys, src=0)  # also the barrier: the others wait for the entries
        dataset.latents = LatentLookup(cache, keys)


def _fill_split(
    cache: LatentCache,
    dataset: Any,
    vae: torch.nn.Module,
    fingerprint: str,
    resolution: int,
    flips: Iterable[bool],
    split: str,
) -> list[dict[bool, EntryKey] | None]:
    """Keys of every item; the missing, stale or corrupt ones are encoded (batched) and written."""
    flips = tuple(flips)
    keys: list[dict[bool, EntryKey] | None] = []
    todo: list[tuple[EntryKey, int, bool]] = []
    corrupt = 0
    for index in range(len(dataset)):
        try:
            image = dataset.image_digest(index)
        except DECODE_ERRORS:
            keys.append(None)
            continue
        item = {flip: EntryKey(fingerprint, resolution, "center", flip, image) for flip in flips}
        keys.append(item)
        for flip, key in item.items():
            if cache.load(key) is None:
                corrupt += cache.path(key).exists()
                todo.append((key, index, flip))
    device, dtype = next(vae.parameters()).device, vae.dtype
    built = 0
    for start in range(0, len(todo), ENCODE_BATCH):
        chunk = todo[start : start + ENCODE_BATCH]
        pixels, kept = [], []
        for key, index, flip in chunk:
            try:
                pixels.append(dataset.pixels(index, flip=flip))  # (3, R, R)
                kept.append(key)
            except DECODE_ERRORS:
                keys[index] = None
        if not kept:
            continue
        with torch.no_grad():
            moments = vae.encode(torch.stack(pixels).to(device, dtype)).latent_dist.parameters  # (B, 2C, h, w)
        for key, m in zip(kept, moments, strict=True):
            cache.save(key, m)
        built += len(kept)
    log.info(
        "latent cache %s: %d entries reused, %d encoded (%d of them stale or corrupt) in %s",
        split,
        sum(len(k) for k in keys if k) - built,
        built,
        corrupt,
        cache.root,
    )
    return keys
