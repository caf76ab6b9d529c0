"""Hub datasets with configurable columns, streamed (`datasets` streaming) from a local parquet folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
from omegaconf import OmegaConf
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.data.hub import HubStream
from ldm.training.run import train
from tests.helpers import write_hub_parquet

pytest.importorskip("datasets")
CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
TRAIN_ROWS, BAD_ROWS = 12, (4, 7)  # row 4: undecodable image, row 7: no caption


def _fast_datasets(monkeypatch, tmp_path: Path) -> None:
    """A temp cache, and no 5 s pause after each shuffled parquet pass (datasets waits for arrow's threads)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flickr30k's shape: one `caption` column holding a list of captions; splits train / val / test."""
    folder = tmp_path_factory.mktemp("flickr30k-like")
    return write_hub_parquet(folder, splits={"train": TRAIN_ROWS, "val": 3, "test": 2}, bad_rows=BAD_ROWS)


@pytest.fixture
def make_dm(hub_folder: Path, tmp_path: Path, monkeypatch):
    """The DataModule from conf/data/flickr30k.yaml (streaming), pointed at the local folder."""

    _fast_datasets(monkeypatch, tmp_path)

    def make(**overrides):
        cfg = OmegaConf.merge(
            OmegaConf.load(CONF_DATA / "flickr8k.yaml"),
            OmegaConf.load(CONF_DATA / "flickr30k.yaml"),
            {"resolution": 32, "batch_size": 4, "num_workers": 0, "hub": {"name": str(hub_folder)}},
            overrides,
        )
        cfg.pop("defaults", None)
        return hydra.utils.instantiate(cfg, tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR))

    return make


def _captions(loader) -> list[str]:
    return [c for batch in loader for c in batch["captions"]]


def test_streamed_split_batches_skip_bad_rows_and_reshuffle_each_pass(make_dm) -> None:
    dm = make_dm(hub={"shuffle_buffer": 8})
    dm.prepare_data()  # streaming: downloads nothing
    dm.setup("fit")
    assert isinstance(dm.splits["train"], HubStream)
    loader = dm.train_dataloader()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        batch = next(iter(loader))
        first = _captions(loader)
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["input_ids"].shape == (4, 77)
    skipped = [str(w.message) for w in record if "skipped 1 rows without captions and 1 undecodable" in str(w.message)]
    assert skipped, [str(w.message) for w in record]
    rows = {int(c.split()[2]) for c in first}  # "train row I caption J": a random one of each row's list
    assert rows == set(range(TRAIN_ROWS)) - set(BAD_ROWS) and len(first) == TRAIN_ROWS - len(BAD_ROWS)
    second = _captions(loader)
    assert [c.split()[2] for c in first] != [c.split()[2] for c in second]  # set_epoch: a new order per pass
    val = _captions(dm.val_dataloader())
    assert val == [f"val row {i} caption 0" for i in range(3)]  # validation: in order, first caption


def test_each_ddp_rank_streams_its_own_part(make_dm) -> None:
    seen = []
    for rank in (0, 1):
        dm = make_dm()
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm.setup("fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seen.append({c.split()[2] for c in _captions(dm.train_dataloader())})
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {str(i) for i in set(range(TRAIN_ROWS)) - set(BAD_ROWS)}


def test_missing_columns_are_named(make_dm) -> None:
    dm = make_dm(hub={"caption_columns": ["sentences"]})
    with pytest.raises(ValueError, match=r"lacks columns \['sentences'\]"):
        dm.setup("fit")


def test_training_on_a_stream(compose_train, hub_folder: Path, tmp_path: Path, monkeypatch) -> None:
    _fast_datasets(monkeypatch, tmp_path)
    trainer, _ = train(
        compose_train(
            "data=flickr30k",
            f"data.hub.name={hub_folder}",
            "data.generate=null",
            "data.resolution=64",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.max_steps=10",  # a stream has no length: required (ldm/config.py check_run_length)
        )
    )
    assert trainer.global_step == 3  # 10 usable rows, batch 4: an epoch ends when the stream does
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_a_stream_with_a_decaying_schedule_runs_to_max_steps(compose_train, hub_folder, tmp_path, monkeypatch, caplog):
    """Cosine is sized to max_steps=7; with max_epochs=1 the 3-step stream would stop it at lr 0.83 of the start."""
    _fast_datasets(monkeypatch, tmp_path)
    cfg = compose_train(
        "data=flickr30k", f"data.hub.name={hub_folder}", "data.generate=null", "data.resolution=64",
        "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.max_steps=7",
        "lr_scheduler=cosine", "lr_scheduler.num_warmup_steps=0", "callbacks.export=null",
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="ldm.config"):
        trainer, _ = train(cfg)
    assert trainer.global_step == 7  # three passes over the stream (3 + 3 + 1 steps)
    group = trainer.optimizers[0].param_groups[0]
    assert group["lr"] < 1e-3 * group["initial_lr"]  # the schedule ran to its end
    assert "running to trainer.max_steps instead (trainer.max_epochs=-1)" in caplog.text
