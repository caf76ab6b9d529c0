"""Every config group composes and instantiates offline; bad values stop before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from ldm.config import validate_train_config
from ldm.data.synthetic import write_captioned_images
from ldm.errors import ConfigError
from ldm.tiny import ensure_tiny_pretrained, ensure_tiny_text_tower
from ldm.training.run import build_module, build_trainer
from tests.conftest import CONF_DIR
from tests.helpers import run_train

ROOT = Path(__file__).resolve().parents[1]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def flickr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_captioned_images(
        tmp_path_factory.mktemp("flickr") / "set", layout="original", num_images=10, image_size=64, seed=0
    )


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_instantiate(option: str, compose_train, cache_dir: Path) -> None:
    """sd15/clip_b32 name hub ids; offline they are pointed at tiny local folders (same loading code)."""
    overrides = [f"model={option}"]
    if option != "tiny":
        overrides.append(f"model.pretrained={ensure_tiny_pretrained(cache_dir / 'tiny-sd15')}")
    if option == "clip_b32":
        overrides.append(f"model.text_encoder={ensure_tiny_text_tower(cache_dir / 'tiny-text-tower-16')}")
    module = build_module(compose_train(*overrides))
    assert module.trainable_names[0] == "text_encoder"
    assert (module.text_projection is not None) == (option == "clip_b32")


@pytest.mark.parametrize("option", _options("data"))
def test_data_options_instantiate(option: str, compose_train, flickr_root: Path, tmp_path: Path, monkeypatch) -> None:
    overrides = [f"data={option}", f"data.root={flickr_root}", "data.resolution=64", "data.num_workers=0"]
    data = compose_train(*overrides).data
    if data.layout == "hub":  # offline: a local parquet folder with the option's columns, not experiment=tiny's set
        import datasets

        from tests.helpers import write_hub_parquet

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
        hub = data.hub
        splits = {hub.train_split: 4, hub.val_split: 2, hub.test_split: 2}
        folder = write_hub_parquet(
            tmp_path / "hub", splits=splits, image_column=hub.image_column, caption_columns=tuple(hub.caption_columns)
        )
        overrides += [f"data.hub.name={folder}", "data.generate=null"]
    cfg = compose_train(*overrides)
    from transformers import CLIPTokenizer

    from ldm.assets import CLIP_TOKENIZER_DIR

    datamodule = instantiate(cfg.data, tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["pixel_values"].shape[1:] == (3, 64, 64)


@pytest.mark.parametrize("option", _options("optimizer"))
def test_optimizer_options_instantiate(option: str, compose_train) -> None:
    cfg = compose_train(f"optimizer={option}").optimizer
    optimizer = instantiate(cfg)(params=[torch.nn.Parameter(torch.ones(2))])
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}".endswith(cfg._target_.rsplit(".", 1)[-1])
    group = optimizer.param_groups[0]
    for key, value in cfg.items():  # every value the YAML sets reaches the optimizer
        if not key.startswith("_"):
            assert group[key] == (tuple(value) if key == "betas" else value), key


@pytest.mark.parametrize("option", _options("lr_scheduler"))
def test_lr_scheduler_options_instantiate(option: str, compose_train) -> None:
    """The schedule the YAML names, sized by num_training_steps: warm-up ramp, then constant or cosine decay."""
    base, total = 1e-5, 1000
    cfg = compose_train(f"lr_scheduler={option}").lr_scheduler
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=base)
    scheduler = instantiate(cfg)(optimizer=optimizer, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    warmup = cfg.num_warmup_steps
    assert lrs[warmup] == pytest.approx(base)
    if warmup:
        assert lrs[0] == 0 and lrs[warmup // 2] == pytest.approx(base / 2)
    after = lrs[warmup + (total - warmup) // 2]
    if cfg.name == "cosine":
        assert after == pytest.approx(base / 2, rel=1e-2) and lrs[-1] < 1e-3 * base
    else:
        assert after == lrs[-1] == pytest.approx(base)


@pytest.mark.parametrize("group", ["trainer", "callbacks", "logger"])
def test_trainer_callbacks_logger_options_instantiate(group: str, compose_train) -> None:
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    for option in _options(group):
        cfg = compose_train(f"{group}={option}", "trainer.accelerator=cpu", "trainer.max_epochs=3")
        trainer = build_trainer(cfg)
        assert trainer.max_epochs == 3 and trainer.gradient_clip_val == cfg.trainer.gradient_clip_val
        assert trainer.accumulate_grad_batches == cfg.trainer.accumulate_grad_batches
        strategy = DDPStrategy if cfg.trainer.strategy == "ddp" else SingleDeviceStrategy
        assert type(trainer.strategy) is strategy, option
        assert trainer.precision in ("bf16-mixed", "32-true")  # 16-mixed resolved for this CPU
        built = {type(c).__name__ for c in trainer.callbacks}
        wanted = {c._target_.rsplit(".", 1)[-1] for c in cfg.callbacks.values() if c is not None}
        assert wanted <= built, wanted - built
        assert [type(lg).__name__ for lg in trainer.loggers] == [
            c._target_.rsplit(".", 1)[-1] for c in cfg.logger.values() if c is not None
        ]


def test_there_is_no_untested_fsdp_option() -> None:
    """FSDP was removed (docs/multi-gpu.md says why): DDP is the multi-device path."""
    assert _options("trainer") == ["ddp", "default"]


def test_default_config_is_the_sd15_flickr8k_run(compose_train) -> None:
    from tests.conftest import compose_config

    cfg = compose_config("train", ["paths.output_dir=/tmp/x"])
    assert cfg.model.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert list(cfg.model.trainable) == ["text_encoder"]
    assert cfg.optimizer.lr == 1e-5 and cfg.data.batch_size == 32 and cfg.data.resolution == 512
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.max_epochs == 9


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-1e-5", "optimizer.lr"),
        ("data.resolution=100", "data.resolution"),
        ("model.trainable=[vae]", "model.trainable"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
    ],
)
def test_bad_values_stop_before_any_model_loads(override: str, key: str, compose_train, monkeypatch) -> None:
    monkeypatch.setattr("ldm.training.module.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match=rf"{key}=.*expected"):
        validate_train_config(compose_train(override))


def test_missing_data_root_is_named(monkeypatch, tmp_path: Path) -> None:
    from tests.conftest import compose_config

    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", f"data.root={tmp_path}/nope"])
    with pytest.raises(ConfigError, match=r"data.root=.*/nope.*expected an existing Flickr8k folder"):
        validate_train_config(cfg)


def test_unknown_key_is_refused(compose_train) -> None:
    with pytest.raises(ConfigCompositionException, match=r"optimizer\.lrr"):
        compose_train("optimizer.lrr=1e-5")


def test_cli_config_error_is_one_clear_line(tmp_path: Path) -> None:
    result = run_train("experiment=tiny", "optimizer.lr=0", f"paths.cache_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0
    assert "optimizer.lr=0: expected a number > 0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_multirun_gives_one_folder_per_run(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m",
        "experiment=tiny",
        "optimizer.lr=1e-4,3e-4",
        "trainer.max_epochs=1",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "final_model" / "text_encoder" / "model.safetensors").is_file()
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    lrs = [(run / ".hydra" / "overrides.yaml").read_text() for run in runs]
    assert "optimizer.lr=0.0001" in lrs[0] and "optimizer.lr=0.0003" in lrs[1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=flickr30k"], r"trainer.max_steps=-1: expected an integer > 0 with streamed data \(data.hub.streaming"),
        (["data=flickr30k", "trainer.max_steps=0"], r"trainer.max_steps=0: expected -1 \(no limit\) or an integer > 0"),
        (
            ["lr_scheduler=cosine", "trainer.max_epochs=-1"],
            r"lr_scheduler.name='cosine' decays over the run's length, but trainer.max_epochs=-1 with "
            r"trainer.max_steps=-1 has none: set trainer.max_steps",
        ),
    ],
)
def test_a_run_without_a_length_is_refused_before_any_model_loads(
    overrides: list[str], message: str, compose_train, monkeypatch
) -> None:
    monkeypatch.setattr("ldm.training.module.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match=message):
        validate_train_config(compose_train(*overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["data=flickr30k", "trainer.max_steps=100", "lr_scheduler=cosine"],  # a stream sized in steps
        ["lr_scheduler=cosine", "trainer.max_epochs=-1", "trainer.max_steps=100"],
        ["trainer.max_epochs=-1"],  # a constant schedule needs no length
        ["data=flickr30k", "data.hub.streaming=false", "lr_scheduler=cosine"],  # downloaded: it has a length
    ],
)
def test_a_run_with_a_length_passes(overrides: list[str], compose_train) -> None:
    validate_train_config(compose_train(*overrides))
