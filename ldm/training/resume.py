"""Resuming: what `ckpt_path=` may name, and per-step seeding that makes a resumed run exact.

Why resolve "last" here: every Hydra run writes into its own new folder, so Lightning's own
`ckpt_path="last"` (which looks in the *current* run's checkpoint folder) never finds anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from ldm.errors import ConfigError
from ldm.seeds import global_seed, step_seed

LAST = "last"
LAST_FILE = Path("checkpoints") / "last.ckpt"


def resolve_ckpt_path(ckpt_path: str | None, runs_dir: str | Path) -> str | None:
    """Map `ckpt_path` to a checkpoint file.

    - null: start fresh;  a file: itself (its existence is checked by `validate_train_config`);
    - a run folder (`outputs/DATE/TIME`, or a multirun job folder): its `checkpoints/last.ckpt`;
    - "last": the most recently written `**/checkpoints/last.ckpt` under `runs_dir` (`paths.runs_dir`).
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == LAST:
        found = sorted(Path(runs_dir).glob(f"**/{LAST_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(
                f"ckpt_path=last: no {LAST_FILE} under paths.runs_dir={str(runs_dir)!r}; nothing to resume "
                "(pass a .ckpt file or a run folder, or set paths.runs_dir)"
            )
        return str(found[-1])
    path = Path(ckpt_path)
    if path.is_dir():
        last = path / LAST_FILE
        if not last.is_file():
            raise ConfigError(f"ckpt_path={str(ckpt_path)!r}: a folder without {LAST_FILE}; expected a run folder")
        return str(last)
    return str(ckpt_path)


class SeedEachStep(L.Callback):
    """Reseed torch's global RNG before every training step from (seed, epoch, batch index, rank).

    Why: a resumed run starts its RNG from `seed_everything`, not from where the killed run was, so the
    noise, timesteps and dropout of the steps after a resume would differ from an uninterrupted run.
    Drawing them from a seed that depends only on the step's position makes a resume bit-exact (the data
    order and per-item randomness are handled by `ldm.data.resumable`). The rank keeps DDP ranks' noise
    independent. The base seed is Lightning's `PL_GLOBAL_SEED` (set by `seed_everything`, inherited by DDP
    ranks), the same one Lightning's own DistributedSampler uses.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        base = self.seed if self.seed is not None else global_seed()
        torch.manual_seed(step_seed(base, trainer.current_epoch, batch_idx, trainer.global_rank))
