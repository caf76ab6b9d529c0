"""Sweeps: the Optuna sweeper over lr / caption dropout / accumulation, and the SLURM (submitit) launcher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONF_DIR
from tests.helpers import run_train

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")

SEARCHED = ("optimizer.lr", "data.caption_dropout", "trainer.accumulate_grad_batches")


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_on_the_tiny_preset(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m",
        "hparams_search=lr_optuna",
        "experiment=tiny",
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    sampled = []
    for trial in trials:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        assert set(SEARCHED) <= set(overrides)
        assert 1e-6 <= float(overrides["optimizer.lr"]) <= 1e-4
        assert 0.0 <= float(overrides["data.caption_dropout"]) <= 0.2
        assert overrides["trainer.accumulate_grad_batches"] in {"1", "2", "4"}
        assert (trial / "checkpoints" / "last.ckpt").is_file()
        sampled.append({k: overrides[k] for k in SEARCHED})
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and math.isfinite(results["best_value"])  # val/loss returned by main()
    best = {k: str(v) for k, v in results["best_params"].items()}
    assert any(all(float(best[k]) == float(s[k]) for k in SEARCHED) for s in sampled)


def test_the_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]'")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hparams_search=lr_optuna", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.tasks_per_node == 1
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert set(cfg.hydra.sweeper.params) == set(SEARCHED)
