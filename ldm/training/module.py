"""The LightningModule: frozen VAE and U-Net around a trainable CLIP text encoder.

Why the shape: gradients of the ordinary noise-prediction loss flow through the frozen U-Net into the
text encoder, so only the text encoder (and an optional width projection) learns; checkpoints hold only
what learns, never the 3.4 GB of frozen weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from ldm.components import check_trainable, load_components, load_frozen_parts
from ldm.errors import require
from ldm.training.adapters import apply_adapter, normalize_adapter
from ldm.training.checkpoint_fit import check_checkpoint_fits
from ldm.training.faults import NonFiniteLossGuard
from ldm.training.precision import frozen_weight_dtype
from ldm.training.preservation import EmbeddingPreservation, gradient_norm

PREDICTION_TYPES = ("epsilon", "v_prediction")


class TextEncoderFineTuner(L.LightningModule):
    """Fine-tunes `trainable` parts of Stable Diffusion with the noise-prediction loss."""

    def __init__(
        self,
        *,
        pretrained: str,
        revision: str | None,
        variant: str | None,
        text_encoder: str | None,
        projection: bool,
        trainable: Iterable[str],
        prediction_type: str | None,
        val_seed: int,
        max_nonfinite_steps: int,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        adapter: dict[str, Any] | None = None,
        objective: nn.Module | None = None,
        preservation: EmbeddingPreservation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "objective", "preservation"])
        trainable = check_trainable(trainable)
        if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"model.prediction_type={prediction_type!r}: expected null or one of {PREDICTION_TYPES}")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.nonfinite = NonFiniteLossGuard(max_nonfinite_steps)

        parts = load_components(
            pretrained,
            revision=revision,
            variant=variant,
            text_encoder=text_encoder,
            prediction_type=prediction_type,
        )
        self.vae, self.unet, self.text_encoder = parts["vae"], parts["unet"], parts["text_encoder"]
        self.tokenizer, self.noise_scheduler = parts["tokenizer"], parts["scheduler"]
        self.text_projection = self._build_projection(projection)
        if self.noise_scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type={self.noise_scheduler.config.prediction_type!r} is not supported; "
                f"set model.prediction_type to one of {PREDICTION_TYPES}"
            )

        self.trainable_names = [*trainable, *(["text_projection"] if projection else [])]
        self.frozen_names = [n for n in ("vae", "unet", "text_encoder") if n not in self.trainable_names]
        for name in ("vae", "unet", "text_encoder", "text_projection"):
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(name in self.trainable_names)
        self.adapter = normalize_adapter(adapter)  # LoRA: only its tensors learn (ldm/training/adapters.py)
        require(
            self.adapter is None or "text_encoder" in trainable, "model.adapter needs text_encoder in model.trainable"
        )
        self.__dict__["peft_model"] = None if self.adapter is None else apply_adapter(self.text_encoder, self.adapter)
        self.adapter_keys = {f"text_encoder.{n}" for n, p in self.text_encoder.named_parameters() if p.requires_grad}
        self.objective = objective  # None: the noise-prediction loss; else e.g. ldm.training.reward.RewardObjective
        # kept out of the module tree: its cached teacher is not a weight, never in a checkpoint. It keeps the
        # text encoder's outputs, so it has nothing to do when the text encoder does not train.
        keep = preservation is not None and preservation.active and "text_encoder" in self.trainable_names
        self.__dict__["preservation"] = preservation if keep else None
        # the learning check sets this to ask the next step for the task loss's own gradient norm (below)
        self.measure_task_gradient = False
        self.task_gradient_norm: float | None = None
        self.train()

    def _build_projection(self, projection: bool) -> nn.Linear | None:
        """A trainable Linear from the text tower's width to the U-Net's cross-attention width."""
        width = self.text_encoder.config.hidden_size
        cross = self.unet.config.cross_attention_dim
        if projection:
            return nn.Linear(width, cross)
        if width != cross:
            raise ValueError(
                f"the text encoder outputs {width}-d embeddings but the U-Net's cross_attention_dim is {cross}: "
                f"set model.projection=true to learn a Linear({width}->{cross}), or use a {cross}-d text encoder"
            )
        return None

    # --- frozen parts stay frozen -------------------------------------------------------------------
    def train(self, mode: bool = True) -> TextEncoderFineTuner:
        """Lightning calls train() every epoch; frozen parts must stay in eval (no dropout, fixed norms)."""
        super().train(mode)
        for name in self.frozen_names:
            getattr(self, name).eval()
        return self

    def setup(self, stage: str) -> None:
        """Frozen parts take the dtype of the precision actually in use (the trainer's precision plugin):
        fp16 under 16-mixed, bf16 under bf16-mixed, fp32 otherwise; trainable weights stay fp32 for AMP.

        Why the plugin, not the device: whatever decides the precision (`resolve_precision` for users, an
        explicit plugin in a test), the cast that follows is the same on a CPU and on a GPU.
        """
        dtype = frozen_weight_dtype(str(self.trainer.precision))
        for name in self.frozen_names:
            getattr(self, name).to(dtype=dtype)
        if stage == "fit" and self.preservation is not None:
            self.preservation.cache_teacher(self)  # before a checkpoint is restored: the run's own start

    # --- the shared step ----------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, cross_attention_dim) U-Net conditioning."""
        hidden = self.text_encoder(input_ids)[0]  # (B, 77, width)
        if self.text_projection is not None:
            hidden = self.text_projection(hidden)
        return hidden

    def _common_step(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction loss; `generator` fixes latents, noise and timesteps (validation).

        The batch holds pixels, or with `data.cache_latents` the moments the frozen VAE gave each image
        (`ldm.data.latent_cache`): either way a fresh latent is drawn from the same posterior.
        """
        with torch.no_grad():
            if "latent_moments" in batch:  # (B, 2C, H/8, W/8)
                posterior = DiagonalGaussianDistribution(batch["latent_moments"].to(self.vae.dtype))
            else:  # (B, 3, H, W) in [-1, 1]
                posterior = self.vae.encode(batch["pixel_values"].to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator).float() * self.vae.config.scaling_factor  # (B, 4, H/8, W/8)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator, device=latents.device)
        return self.denoising_loss(latents, noise, timesteps, batch["input_ids"])

    def denoising_loss(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        input_ids: torch.Tensor,
        per_sample: bool = False,
    ) -> torch.Tensor:
        """MSE of the U-Net's prediction (epsilon or v, as the scheduler says) for these latents noised to
        `timesteps`, conditioned on the text encoder's output for `input_ids`; with `per_sample`, one MSE per
        sample (B,), for callers that compare two encoders caption by caption."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        hidden = self.encode_text(input_ids)  # (B, 77, cross_attention_dim)
        pred = self.unet(noisy.to(self.unet.dtype), timesteps, hidden.to(self.unet.dtype)).sample
        if per_sample:
            return ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
        return F.mse_loss(pred.float(), target.float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """The loss, or None when it is NaN/inf: Lightning then skips backward, so the optimizer step finds
        no gradients and leaves weights and moments as they were (the batch still counts in global_step)."""
        task = self._common_step(batch) if self.objective is None else self.objective(self, batch)
        loss = task
        if self.preservation is not None:
            keep = self.preservation.loss(self)
            loss = task + self.preservation.weight * keep
            self.log("train/preservation_loss", keep, on_step=True, on_epoch=True, batch_size=len(batch["input_ids"]))
            if self.measure_task_gradient:
                self.task_gradient_norm = gradient_norm(task, [p for p in self.parameters() if p.requires_grad])
        skip = self.nonfinite.should_skip(loss, self.trainer.strategy)
        self.log("train/nonfinite_steps", float(self.nonfinite.total), on_step=True, on_epoch=False)
        if skip:
            return None
        # train/loss stays the objective's own loss, comparable with runs without preservation
        self.log("train/loss", task, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _seeded_generator(self, batch_idx: int) -> torch.Generator:
        """Same noise and timesteps for batch i every epoch, so validation losses compare."""
        return torch.Generator(device=self.device).manual_seed(self.hparams.val_seed + batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._common_step(batch, self._seeded_generator(batch_idx))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["input_ids"]))
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._common_step(batch, self._seeded_generator(batch_idx))
        self.log("test/loss", loss, sync_dist=True, batch_size=len(batch["input_ids"]))
        return loss

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("no optimizer: build the module with optimizer=... (train.py does) to fit it")
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(
            optimizer=optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- light checkpoints --------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the weights that learn: what checkpoints and exports hold."""
        return self._trainable_only(self.state_dict())

    def _trainable_only(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With an adapter the text encoder contributes its adapter tensors alone."""
        prefixes = tuple(f"{name}." for name in self.trainable_names)
        keep = [k for k in state if k.startswith(prefixes)]
        if self.adapter is not None:
            keep = [k for k in keep if not k.startswith("text_encoder.") or k in self.adapter_keys]
        return {k: state[k] for k in keep}

    def reload_base_parts(self, names: Iterable[str]) -> None:
        """Load frozen parts (`unet`, `vae`) again from the base, frozen and in eval mode.

        Why: the OpenVINO engine drops the torch U-Net and VAE before it compiles its own (their 3.7 GB would
        sit beside the engine's copy at the peak); when compiling fails, `engine.backend=auto` needs them back.
        """
        names = list(names)
        require(all(n in self.frozen_names for n in names), f"only frozen parts can be reloaded, not {names}")
        hp = self.hparams
        parts = load_frozen_parts(hp.pretrained, revision=hp.revision, variant=hp.variant)
        for name in names:
            setattr(self, name, parts[name].requires_grad_(False).eval())

    def checkpoint_signature(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be loaded onto this model."""
        base = self.hparams.pretrained
        return {
            # a local folder is recorded by its absolute path, so sample.py works from any directory
            "base": os.path.realpath(base) if os.path.isdir(base) else base,
            "revision": self.hparams.revision,
            "text_encoder": self.hparams.text_encoder,
            "trainable": sorted(self.trainable_names),
            "adapter": self.adapter,
        }

    def objective_record(self) -> dict[str, Any]:
        """What training optimised (recorded in checkpoints and export.json; not part of the fit check)."""
        return {"name": "diffusion"} if self.objective is None else self.objective.describe()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self._trainable_only(checkpoint["state_dict"])
        checkpoint["ldm"] = {**self.checkpoint_signature(), "objective": self.objective_record()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint for another base or trainable set instead of half-loading it silently.

        The frozen weights (already loaded from the base) are put back beside the trainable ones, so
        Lightning's strict loading still checks every key.
        """
        check_checkpoint_fits(checkpoint, self.checkpoint_signature(), self.trainable_state_dict())
        trainable = checkpoint["state_dict"]
        checkpoint["state_dict"] = {**self.state_dict(), **trainable}
