"""Non-finite losses: skip the step and count it; a run of them stops training with an error.

Why skip rather than stop at once: a single NaN/inf (an fp16 overflow, one degenerate batch) would
otherwise write NaN into every trainable weight through the optimizer; skipping it costs one step. Why
stop after N in a row: then it is no longer a stray batch but a diverged run, and continuing only burns
GPU hours. Under 16-mixed, AMP's GradScaler separately skips steps whose *gradients* overflow.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ldm.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive training steps had a NaN/inf loss."""


class _Reducer(Protocol):
    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool: ...


class NonFiniteLossGuard:
    """Decides per step whether the loss is usable; counts skipped steps (total and in a row)."""

    def __init__(self, max_consecutive: int) -> None:
        if not isinstance(max_consecutive, int) or max_consecutive < 1:
            raise ValueError(f"model.max_nonfinite_steps={max_consecutive!r}: expected an integer ≥ 1")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def should_skip(self, loss: torch.Tensor, strategy: _Reducer) -> bool:
        """True if this step must be skipped; raises `NonFiniteLossError` on the N-th bad step in a row.

        The decision is shared across DDP ranks (any rank bad -> all skip): a rank that skipped backward
        while the others all-reduce gradients would hang the run.
        """
        bad = strategy.reduce_boolean_decision(not bool(torch.isfinite(loss).all()), all=False)
        if not bad:
            self.consecutive = 0
            return False
        self.total += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"training stopped: the loss was NaN/inf in {self.consecutive} consecutive steps "
                f"(model.max_nonfinite_steps={self.max_consecutive}; {self.total} skipped in all). The run has "
                "diverged: lower optimizer.lr, keep trainer.gradient_clip_val, or use 32-true/bf16-mixed "
                "precision, then resume from an earlier checkpoint."
            )
        return True
