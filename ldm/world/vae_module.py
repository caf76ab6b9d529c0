"""Stage 1: a small `AutoencoderKL` trained on the world's images (reconstruction + KL), as a LightningModule.

Why its own module: SD1.5's VAE is frozen and given; the offline world needs one that knows its images.
It is a plain diffusers `AutoencoderKL`, so stage 2 loads it like any SD VAE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR


def configure_optimizers(module: L.LightningModule, optimizer: Callable | None, lr_scheduler: Callable | None) -> Any:
    """The optimizer and per-step LR schedule from the config's factories (as TextEncoderFineTuner does)."""
    if optimizer is None:
        raise RuntimeError("no optimizer: build the module with optimizer=... (train.py does) to fit it")
    opt = optimizer(params=[p for p in module.parameters() if p.requires_grad])
    if lr_scheduler is None:
        return opt
    scheduler = lr_scheduler(optimizer=opt, num_training_steps=int(module.trainer.estimated_stepping_batches))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class VAEModule(L.LightningModule):
    """AutoencoderKL(**vae) trained with L1 + MSE reconstruction and `kl_weight` x KL per latent element.

    `tokenizer`: train.py builds the DataModule with the module's tokenizer; the VAE ignores the captions.
    """

    def __init__(
        self,
        *,
        vae: Mapping[str, Any],
        kl_weight: float,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"model.kl_weight={kl_weight}: expected a number >= 0")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.vae = AutoencoderKL(**vae)
        self.tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def _common_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        pixels = batch["pixel_values"]  # (B, 3, H, W) in [-1, 1]
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample()  # (B, C, H/f, W/f)
        recon = self.vae.decode(latents).sample  # (B, 3, H, W)
        rec = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels)
        kl = posterior.kl().mean() / latents[0].numel()
        loss = rec + self.hparams.kl_weight * kl
        size = len(pixels)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True, batch_size=size)
        self.log(f"{stage}/rec", rec, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}/kl", kl, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._common_step(batch, "val")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)

    @torch.no_grad()
    def latent_std(self, loader: Any, max_batches: int) -> float:
        """Std of posterior means over up to `max_batches` batches: SD scales latents by 1/std (0.18215 there)."""
        means = []
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            means.append(self.vae.encode(batch["pixel_values"].to(self.device)).latent_dist.mean)
        return float(torch.cat(means).std())
