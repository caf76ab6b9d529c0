"""An exponential moving average of the weights over the last part of a run, sized to the run's length.

Why: with a constant learning rate, the last step's weights are one noisy sample around where training has
got to; an average of the last steps is a better model at no extra step (the EMA every diffusion trainer
keeps). Why not Lightning's `EMAWeightAveraging` as it is: its start step and decay are absolute numbers, so
a run shortened with `trainer.max_steps=...` that never reaches the start step would export its *initial*
weights, and a fixed decay of 0.999 over a few hundred steps still weighs the starting weights heavily.
Here both are fractions of the run: `start` (begin averaging after this share of the steps) and `horizon`
(the average's memory, as a share of the steps: decay = 1 - 1 / (horizon x steps)).

Lightning's `WeightAveraging` does the rest: the average replaces the weights for validation and when
training ends (so every `on_fit_end` export writes it), and it is saved in checkpoints for exact resumes.
It averages a copy of the whole LightningModule, frozen parts included: meant for models whose weights all
train (the shapes world's base model), not for SD1.5 with a frozen 3.4 GB U-Net.
"""

from __future__ import annotations

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import WeightAveraging


class RunLengthEMA(WeightAveraging):
    """EMA of every weight, updated after each optimizer step from `start` x steps on, decay from `horizon`."""

    def __init__(self, *, start: float, horizon: float) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"callbacks.ema.start={start}: expected a share of the run's steps in [0, 1)")
        if not 0.0 < horizon <= 1.0:
            raise ValueError(f"callbacks.ema.horizon={horizon}: expected a share of the run's steps in (0, 1]")
        super().__init__(avg_fn=self._blend, use_buffers=True)
        self.start, self.horizon = start, horizon
        self.start_step, self.decay = 0, 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            steps = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
            self.start_step = int(self.start * steps)
            self.decay = 1.0 - 1.0 / max(1.0, self.horizon * steps)
        super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimizer step from `start_step` on (the first update copies the weights)."""
        return step_idx is not None and step_idx >= self.start_step

    def _blend(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return averaged + (current - averaged) * (1.0 - self.decay)
