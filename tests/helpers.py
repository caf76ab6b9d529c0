"""Test-only helpers: `train.py` in a subprocess, probe callbacks injected through Hydra overrides
(`+callbacks.NAME._target_=tests.helpers.CLASS`, so production code carries no test hooks), and a local
parquet folder in the shape of a hub dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from ldm.data.latent_cache import EntryKey, LatentCache

ROOT = Path(__file__).resolve().parents[1]


def train_cli_env() -> dict[str, str]:
    """Offline, one thread per process (2 shared cores: OpenMP spin-waits made 2 threads far slower)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def start_train(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """`python train.py ARGS` in the background, stdout+stderr into `log`."""
    out = open(log, "w")  # noqa: SIM115 - closed with the process by the caller's wait
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=train_cli_env(), stdout=out, stderr=out
    )


def run_train(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=train_cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class SlowSteps(L.Callback):
    """Sleep after each training batch, so a test can kill the run mid-epoch without racing it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


class RankProbe(L.Callback):
    """Write what each DDP rank saw to `dirpath/rank{R}.json`: its losses, steps, val/loss, weights' digest."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = torch.cat([p.detach().flatten().cpu() for p in pl_module.parameters() if p.requires_grad])
        info = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "losses": self.losses,
            "val_loss": float(trainer.callback_metrics["val/loss"]),
            "weights_sum": float(weights.double().sum()),
            "weights_sha256": hashlib.sha256(weights.numpy().tobytes()).hexdigest(),
        }
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


def write_hub_parquet(
    folder: Path,
    *,
    splits: dict[str, int],
    image_column: str = "image",
    caption_columns: tuple[str, ...] = ("caption",),
    image_size: int = 64,
    bad_rows: tuple[int, ...] = (),
) -> Path:
    """A local `datasets` folder (one parquet file per split + a README naming the splits, as hub cards do).

    One caption column holds a list of 3 captions per row (Flickr30k's shape); several hold one string
    each (jxie/flickr8k's). In the train split, `bad_rows` get an undecodable image (even index) or no
    caption at all (odd index).
    """
    import datasets
    from PIL import Image

    single = len(caption_columns) == 1
    caption_type = datasets.Sequence(datasets.Value("string")) if single else datasets.Value("string")
    features = datasets.Features({image_column: datasets.Image(), **{c: caption_type for c in caption_columns}})
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in splits.items():
        colours = [((37 * i) % 256, (91 * i) % 256, (53 * i + 100) % 256) for i in range(count)]
        rows: dict[str, list] = {image_column: [Image.new("RGB", (image_size, image_size), c) for c in colours]}
        for k, column in enumerate(caption_columns):
            rows[column] = [
                [f"{split} row {i} caption {j}" for j in range(3)] if single else f"{split} row {i} caption {k}"
                for i in range(count)
            ]
        if split == "train":
            for i in bad_rows:
                if i % 2 == 0:
                    rows[image_column][i] = {"bytes": b"not an image", "path": None}
                else:
                    for column in caption_columns:
                        rows[column][i] = [] if single else ""
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
    entries = "".join(f"      - split: {s}\n        path: {s}.parquet\n" for s in splits)
    (folder / "README.md").write_text(f"---\nconfigs:\n  - config_name: default\n    data_files:\n{entries}---\n")
    return folder


class SaveProbe(L.Callback):
    """Test-only (injected with +callbacks.save_probe._target_=...): records which DDP rank writes entries."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save, rank, log = LatentCache.save, trainer.global_rank, self.dirpath / f"rank{trainer.global_rank}.txt"
        self.dirpath.mkdir(parents=True, exist_ok=True)
        log.write_text("")

        def recording_save(cache: LatentCache, key: EntryKey, moments: torch.Tensor) -> None:
            with open(log, "a") as f:
                f.write(f"{rank} {key.image[:8]}\n")
            save(cache, key, moments)

        LatentCache.save = recording_save  # this process only; setup runs before CacheLatents fills the cache
