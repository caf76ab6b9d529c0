"""Lightning callbacks of this project: the learning check, the final export, sample images, cached latents.

Why a learning check: a known silent failure in peer trainers is a text encoder that never actually
trains (no grads reach it, or its weights are excluded from the optimizer) while the loss still moves.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from ldm.data import latent_cache
from ldm.export.final_model import export_final_model, export_tool_files
from ldm.export.run_facts import run_facts
from ldm.export.single_file import single_file_dtype as single_file_dtype_of
from ldm.generation.output import make_grid
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings, validate_settings
from ldm.training.module import TextEncoderFineTuner


class CacheLatents(L.Callback):
    """Fill the DataModule's latent cache (`data.cache_latents=true`) with the module's own frozen VAE.

    Why a callback: the cache belongs to neither the data (it needs the model's VAE on its device) nor the
    model (it is about batches); it runs when fit, validate or test starts and does nothing otherwise.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latent_cache.prepare(trainer, pl_module.vae, "fit")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # inside fit, on_fit_start has prepared val already
            latent_cache.prepare(trainer, pl_module.vae, "validate")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latent_cache.prepare(trainer, pl_module.vae, "test")


class LearningCheck(L.Callback):
    """Log grad norm and relative weight drift ‖θ−θ₀‖/‖θ₀‖; stop if weights haven't moved after N steps.

    With preservation on (conf/preservation/) a non-zero gradient proves nothing: once weight decay has moved
    the weights, the pull back to the teacher makes one even when the task loss reaches no weight. So the
    first step also measures the task loss's own gradient, and that must be non-zero too; the preserved
    prompts' drift from the teacher (`train/preservation_drift`) is logged beside the weight drift.
    """

    def __init__(self, check_after_steps: int) -> None:
        self.check_after_steps = check_after_steps
        self._initial: dict[str, torch.Tensor] = {}
        self._start_step = 0
        self._saw_gradient = False
        self._checked = False

    def _trainable(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._initial = {n: p.detach().clone() for n, p in self._trainable(pl_module).items()}
        self._start_step = trainer.global_step
        self._checked = False
        self._task_gradient: float | None = None
        if getattr(pl_module, "preservation", None) is not None:
            pl_module.measure_task_gradient = True  # the module measures it on its next training step

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for p in self._trainable(pl_module).values() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self._saw_gradient |= bool(norm > 0)
        if getattr(pl_module, "measure_task_gradient", False) and pl_module.task_gradient_norm is not None:
            self._task_gradient = pl_module.task_gradient_norm
            pl_module.measure_task_gradient = False
            pl_module.log("train/task_grad_norm", self._task_gradient, on_step=True, on_epoch=False)
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def relative_drift(self, pl_module: L.LightningModule) -> float:
        """‖θ−θ₀‖ / ‖θ₀‖ over all trainable tensors."""
        diff = sum(((p.detach() - self._initial[n]) ** 2).sum() for n, p in self._trainable(pl_module).items())
        base = sum((t**2).sum() for t in self._initial.values())
        return float(torch.sqrt(diff) / torch.sqrt(base).clamp_min(1e-12))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        steps = trainer.global_step - self._start_step
        check_now = steps >= self.check_after_steps and not self._checked
        if not (check_now or trainer.global_step % max(trainer.log_every_n_steps, 1) == 0):
            return
        drift = self.relative_drift(pl_module)
        pl_module.log("train/weight_drift", drift, on_step=True, on_epoch=False)
        preservation = getattr(pl_module, "preservation", None)
        if preservation is not None:
            pl_module.log("train/preservation_drift", preservation.drift(pl_module), on_step=True, on_epoch=False)
        self._checked |= check_now
        if check_now and self._task_gradient == 0.0:
            raise RuntimeError(
                f"learning check failed: the training loss gives the trainable weights no gradient (after {steps} "
                "steps only preservation and weight decay moved them). Gradients are not reaching the trainable "
                "parameters; check model.trainable and the conditioning's path into the U-Net."
            )
        if check_now and (drift == 0.0 or not self._saw_gradient):
            raise RuntimeError(
                f"learning check failed: after {steps} optimizer steps the trainable weights "
                f"{'have not moved' if drift == 0.0 else 'moved only by weight decay'} "
                f"(relative drift {drift:.3g}, any non-zero gradient: {self._saw_gradient}). "
                "Gradients are not reaching the trainable parameters; check model.trainable and the optimizer."
            )


class ExportFinalModel(L.Callback):
    """At the end of fit write `final_model/` (`ldm.export.final_model`): weights, folders, export.json, card."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, TextEncoderFineTuner) or trainer.sanity_checking:
            return
        export_final_model(pl_module, self.dirpath, run=run_facts(trainer, pl_module))


class ExportToolFiles(L.Callback):
    """After `ExportFinalModel`, the SD tools' files in `final_model/`: model.safetensors, text_encoder.safetensors
    and, after LoRA, lora.safetensors (`ldm.export.final_model.write_tool_files`).

    Why a callback of its own: the shapes world's stages replace `callbacks.export` with their own exporters,
    which take no single-file settings. `single_file` costs 2 GB of disk for SD1.5 at fp16; the dtype is
    checked here, before training, not after it.
    """

    def __init__(self, dirpath: str, single_file: bool = True, single_file_dtype: str = "fp16") -> None:
        self.dirpath = Path(dirpath)
        self.single_file = bool(single_file)
        self.dtype = single_file_dtype_of(single_file_dtype)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, TextEncoderFineTuner) or trainer.sanity_checking:
            return
        run = run_facts(trainer, pl_module)
        export_tool_files(pl_module, self.dirpath, run=run, single=self.single_file, dtype=self.dtype)


class SampleImages(L.Callback):
    """Every `every_n_epochs` epochs and at the end, render fixed prompts with fixed seeds and log a grid.

    Why: a text-encoder fine-tune moves the loss very little; the same prompts and noise rendered epoch after
    epoch show whether the prompts start to matter. It renders the live module through
    `ldm.generation.pipeline.generate` (no fp16 cast of the trainable weights, train mode restored) and logs
    to TensorBoard.
    """

    def __init__(
        self,
        prompts: list[str],
        seed: int,
        every_n_epochs: int,
        steps: int,
        guidance_scale: float,
        scheduler: str,
        negative_prompt: str,
        height: int | None,
        width: int | None,
        batch_size: int,
        tag: str,
        guidance_interval: Sequence[float] = (0.0, 1.0),
        guidance_rescale: float = 0.0,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: expected an integer ≥ 1")
        self.settings = SampleSettings(
            prompts=tuple(prompts),
            negative_prompt=negative_prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            guidance_interval=tuple(guidance_interval),
            guidance_rescale=guidance_rescale,
            scheduler=scheduler,
            seed=seed,
            height=height,
            width=width,
            num_images=1,
            batch_size=batch_size,
        )
        validate_settings(self.settings)  # a typo stops the run before training, not after the first epoch
        self.every_n_epochs = every_n_epochs
        self.tag = tag
        self.rendered_steps: list[int] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.rendered_steps or self.rendered_steps[-1] != trainer.global_step:
            self.render(trainer, pl_module)

    @rank_zero_only
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Render the prompts (one image each) and add the grid to every TensorBoard logger."""
        grid = np.asarray(make_grid(generate(pl_module, self.settings)))  # (H, W, 3) uint8
        self.rendered_steps.append(trainer.global_step)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            warnings.warn("SampleImages: no TensorBoard logger, so the rendered grid is not logged", stacklevel=2)
        for logger in loggers:
            logger.experiment.add_image(self.tag, grid, trainer.global_step, dataformats="HWC")
