"""The latent cache (ldm/latent_cache.py): hit, miss, stale and corrupt entries; same losses as the pixel path."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.latent_cache import EntryKey, LatentCache, LatentCacheError, prepare, vae_fingerprint
from ldm.data.resumable import SeededItems
from ldm.data.synthetic import write_captioned_images
from ldm.generation.checkpoints import build_model
from ldm.training.run import train
from tests.conftest import compose_config, tiny_overrides

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
SHAPE = (8, 4, 4)


def key(image: str = "a" * 64, flip: bool = False) -> EntryKey:
    return EntryKey(vae="f" * 64, resolution=32, crop="center", flip=flip, image=image)


# --- the entry store --------------------------------------------------------------------------------
def test_an_entry_round_trips_and_other_keys_miss(tmp_path: Path) -> None:
    cache = LatentCache(tmp_path, SHAPE)
    moments = torch.randn(SHAPE)
    assert cache.load(key()) is None  # miss
    cache.save(key(), moments)
    assert torch.equal(cache.load(key()), moments)  # hit
    assert cache.load(key(flip=True)) is None and cache.load(key(image="b" * 64)) is None
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [cache.path(key()).name]  # no temp files left


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "another key's entry", "wrong shape"])
def test_a_damaged_entry_is_never_trusted(tmp_path: Path, damage: str) -> None:
    cache = LatentCache(tmp_path, SHAPE)
    path = cache.path(key())
    if damage == "another key's entry":  # e.g. copied or renamed by hand: its recorded key differs
        cache.save(key(image="b" * 64), torch.randn(SHAPE))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(cache.path(key(image="b" * 64)).read_bytes())
    elif damage == "wrong shape":
        LatentCache(tmp_path, (8, 2, 2)).save(key(), torch.randn(8, 2, 2))
    else:
        cache.save(key(), torch.randn(SHAPE))
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[: len(data) - 10]
        elif damage == "flipped byte":
            data[-5] ^= 0xFF  # inside the tensor: the header still parses, the checksum does not match
        else:
            data = bytearray()
        path.write_bytes(bytes(data))
    assert cache.load(key()) is None


# --- filling from the module's VAE --------------------------------------------------------------------
@pytest.fixture(scope="module")
def module(cache_dir: Path):
    return build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"]).model).eval()


def make_dm(tokenizer, root: Path, latents: Path, **overrides):
    base = {
        "root": str(root),
        "resolution": 32,
        "batch_size": 4,
        "num_workers": 0,
        "cache_latents": True,
        "latent_cache_dir": str(latents),
    }
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DATA / "flickr8k.yaml"), base, overrides)
    return hydra.utils.instantiate(cfg, tokenizer=tokenizer)


def fake_trainer(datamodule) -> SimpleNamespace:
    """What `prepare` reads of a Trainer: one process, rank 0."""
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj)
    return SimpleNamespace(datamodule=datamodule, strategy=strategy, is_global_zero=True)


class CountEncodes:
    """Counts the images the VAE encodes (the work the cache saves)."""

    def __init__(self, vae) -> None:
        self.count = 0
        self.vae, self.encode = vae, vae.encode

    def __enter__(self) -> CountEncodes:
        def encode(x, *args, **kwargs):
            self.count += len(x)
            return self.encode(x, *args, **kwargs)

        self.vae.encode = encode
        return self

    def __exit__(self, *exc: object) -> None:
        del self.vae.encode


def fill(module, tokenizer, root: Path, latents: Path, stage: str = "fit", **overrides) -> tuple[int, object]:
    dm = make_dm(tokenizer, root, latents, **overrides)
    dm.setup(stage)
    with CountEncodes(module.vae) as counter:
        prepare(fake_trainer(dm), module.vae, stage)
    return counter.count, dm


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_captioned_images(tmp_path / "data", layout="original", num_images=10, image_size=40, seed=0)


def test_hit_miss_and_stale_entries(module, images: Path, tmp_path: Path) -> None:
    latents, tok = tmp_path / "latents", module.tokenizer
    first, dm = fill(module, tok, images, latents)
    items = len(dm.splits["train"]) + len(dm.splits["val"])
    assert first == items  # miss: each image encoded once
    assert fill(module, tok, images, latents)[0] == 0  # hit: a new run encodes nothing

    changed = dm.splits["train"].source.samples[0].image  # stale: the same file name, other pixels
    Image.new("RGB", (40, 40), (1, 2, 3)).save(changed)
    assert fill(module, tok, images, latents)[0] == 1

    assert fill(module, tok, images, latents, resolution=24)[0] == items  # stale: another resolution
    assert fill(module, tok, images, latents, random_flip=True)[0] == len(dm.splits["train"])  # + flipped train

    other = build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={tmp_path / 'other'}"]).model)
    with torch.no_grad():
        other.vae.decoder.conv_out.weight.add_(1.0)  # stale: the same base path, other weights
    assert vae_fingerprint(other.vae) != vae_fingerprint(module.vae)
    assert fill(other, tok, images, latents)[0] == items
    tested, dm = fill(module, tok, images, latents, stage="test")
    assert tested == len(dm.splits["test"]) > 0


def test_a_corrupt_entry_is_rebuilt(module, images: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents"
    _, dm = fill(module, module.tokenizer, images, latents)
    entries = sorted(latents.rglob("*.safetensors"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    entries[1].unlink()
    rebuilt, dm = fill(module, module.tokenizer, images, latents)
    assert rebuilt == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent_moments"].shape == (4, 8, 4, 4) and "pixel_values" not in batch

    for entry in latents.rglob("*.safetensors"):  # broken after the fill: an error, never silently used
        entry.write_bytes(b"junk")
    with pytest.raises(LatentCacheError, match="missing or corrupt now"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("random_flip", [False, True])
def test_cached_items_and_losses_equal_the_pixel_path(module, images: Path, tmp_path: Path, random_flip) -> None:
    _, cached = fill(module, module.tokenizer, images, tmp_path / "latents", random_flip=random_flip)
    plain = make_dm(module.tokenizer, images, tmp_path / "unused", cache_latents=False, random_flip=random_flip)
    plain.setup("fit")
    for split in ("train", "val"):
        a, b = SeededItems(cached.splits[split]), SeededItems(plain.splits[split])
        for index in range(len(a)):
            seeded = (index, 1000 + index)  # the item's own RNG: the same flip and caption in both
            c, p = a[seeded], b[seeded]
            assert c["caption"] == p["caption"]
            with torch.no_grad():
                encoded = module.vae.encode(p["pixel_values"][None]).latent_dist.parameters[0]
            torch.testing.assert_close(c["latent_moments"], encoded, rtol=1e-5, atol=1e-5)

    collate = cached.collate
    keys = [(i, 7 + i) for i in range(4)]
    batch_c = collate([SeededItems(cached.splits["train"])[k] for k in keys])
    batch_p = plain.collate([SeededItems(plain.splits["train"])[k] for k in keys])
    losses = []
    for batch in (batch_c, batch_p):
        with torch.no_grad():
            losses.append(module._common_step(batch, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_random_crop_and_streams_are_refused(module, images: Path, tmp_path: Path) -> None:
    message = "data.cache_latents=true needs data.center_crop=true"
    with pytest.raises(InstantiationException, match=re.escape(message)):
        make_dm(module.tokenizer, images, tmp_path, center_crop=False)
    hub = {"layout": "hub", "hub": {"streaming": True}}
    with pytest.raises(InstantiationException, match=r"data\.hub\.streaming=false"):
        make_dm(module.tokenizer, images, tmp_path, **hub)


def test_training_with_cached_latents_encodes_once_across_runs(cache_dir: Path, tmp_path: Path) -> None:
    latents = tmp_path / "latents"
    overrides = ["data.cache_latents=true", f"data.latent_cache_dir={latents}", "trainer.max_epochs=2"]
    trainer, _ = train(compose_config("train", tiny_overrides(tmp_path / "run1", cache_dir, *overrides)))
    splits = trainer.datamodule.splits
    entries = {p: p.stat().st_mtime_ns for p in latents.rglob("*.safetensors")}
    assert len(entries) == len(splits["train"]) + len(splits["val"])  # each image once, for both epochs

    trainer, _ = train(compose_config("train", tiny_overrides(tmp_path / "run2", cache_dir, *overrides, "test=true")))
    after = {p: p.stat().st_mtime_ns for p in latents.rglob("*.safetensors")}
    assert {p: after[p] for p in entries} == entries  # the second run reused them, rewrote none
    assert len(after) == len(entries) + len(trainer.datamodule.splits["test"])  # test=true added the test split
    assert trainer.callback_metrics["test/loss"] > 0
