"""Seeds derived from a position (seed, epoch, index, ...) instead of from an RNG's running state.

Why: an RNG's running state is lost when a run is killed; a seed computed from where the run is can be
computed again after a resume, in any process, DataLoader worker or DDP rank.
"""

from __future__ import annotations

import os

import numpy as np


def global_seed() -> int:
    """The run's seed as Lightning's `seed_everything` publishes it (`PL_GLOBAL_SEED`; DDP ranks inherit it)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def step_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence), e.g. (seed, epoch, batch, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)
