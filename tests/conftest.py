"""Shared fixtures: the real Hydra config composed with CPU/tiny overrides, and a session cache.

The tiny model and the generated data set are written once per session (into a temp cache) and loaded
through the same code paths users run; nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP (it reads this once): waiting OpenMP threads sleep instead of spinning. Why: with
# `make test`'s worker processes on 2 cores, a 2-thread test beside another worker spun and took 322 s
# instead of 120 s. Subprocesses (train.py, DDP ranks) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ldm.config import register_resolvers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# What follows the CPU (bf16 autocast, 16-mixed -> bf16-mixed training, engine.backend=auto's OpenVINO) is
# pinned to the no-bf16-unit choices, so the suite's images and weights do not depend on the CPU it runs on
# (on a Zen 4 with a bf16 unit, bf16 autocast changed images by a level and cast the frozen U-Net to bf16).
# The bf16 paths have their own tests, which ask for them by name (dtype=bf16, native_bf16=True, monkeypatch).
os.environ["LDM_CPU_BF16"] = "0"
os.environ["LDM_ENGINE"] = "torch"
# One torch thread for the suite and its subprocesses. Why: tiny models gain nothing from a second thread,
# and on 2 shared cores 2 OpenMP threads beside another busy process ran 100x slower (spin-waiting).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
register_resolvers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """@slow tests first (stable order otherwise): with `-n` workers (make test), the longest start early and
    the short ones fill in around them, instead of a 2-minute test starting last on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """compose() one of the project's real top-level configs."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the tiny model and generated data are built once."""
    return tmp_path_factory.mktemp("ldm-cache")


def tiny_overrides(output_dir: Path, cache: Path, *extra: str) -> list[str]:
    """The offline preset, with the run folder and the cache redirected into temp folders."""
    return ["experiment=tiny", f"paths.output_dir={output_dir}", f"paths.cache_dir={cache}", *extra]


@pytest.fixture
def compose_train(cache_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """compose('train') with experiment=tiny, run folder in tmp_path, plus extra overrides."""

    def _compose(*overrides: str) -> DictConfig:
        return compose_config("train", tiny_overrides(tmp_path, cache_dir, *overrides))

    return _compose


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with `count` torch threads (the suite runs with 1, see above)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One 1-epoch `experiment=tiny` run (≈5 s): its folder holds all three checkpoint forms for sampling tests."""
    from ldm.training.run import train

    out = tmp_path_factory.mktemp("tiny-run")
    train(compose_config("train", tiny_overrides(out, cache_dir, "trainer.max_epochs=1")))
    return out
