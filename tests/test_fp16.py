"""The GPU default `trainer.precision=16-mixed`, run on the CPU through the same code path (issue 13, item 1).

torch has fp16 autocast and a GradScaler on CPU, so an explicit Lightning `MixedPrecision("16-mixed", "cpu")`
plugin runs exactly what a GPU run does: frozen VAE/U-Net cast to fp16 by `TextEncoderFineTuner.setup`,
trainable weights in fp32, the loss scaled, gradients unscaled and clipped, overflowing steps skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra.utils import instantiate
from lightning.pytorch.plugins import MixedPrecision

from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from ldm.training.checkpoint_io import AtomicCheckpointIO
from ldm.training.run import build_module
from tests.conftest import compose_config, tiny_overrides

INIT_SCALE = 2.0**40  # fp16 gradients overflow at this scale: the scaler must skip the first step
BACKOFF = 2.0**-24  # ... and come back to 2**16 (torch's default) after it
NAN_STEP = 2  # this step's batch gets NaN pixels: the loss guard skips it


class ScalerProbe(L.Callback):
    """Per step: the scaler's scale afterwards, and whether the trainable weights moved."""

    def __init__(self) -> None:
        self.before: list[torch.Tensor] = []
        self.steps: list[dict[str, Any]] = []

    @staticmethod
    def _weights(module: L.LightningModule) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in module.parameters() if p.requires_grad])

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == NAN_STEP:
            batch["pixel_values"].fill_(float("nan"))
        self.before = [self._weights(module)]

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        scaler = trainer.precision_plugin.scaler
        moved = not torch.equal(self.before[0], self._weights(module))
        self.steps.append({"scale": float(scaler.get_scale()), "moved": moved})


def fp16_fit(cfg, out: Path) -> tuple[L.Trainer, L.LightningModule, ScalerProbe]:
    """Fit the tiny model under an explicit CPU fp16 plugin, with the config's own checkpoint/export callbacks."""
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, backoff_factor=BACKOFF)
    probe = ScalerProbe()
    callbacks = [instantiate(cfg.callbacks[name]) for name in ("model_checkpoint", "export", "seed_each_step")]
    trainer = instantiate(
        cfg.trainer,
        precision=None,
        plugins=[AtomicCheckpointIO(), MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[*callbacks, probe],
        logger=False,
        enable_progress_bar=False,
    )
    module = build_module(cfg)
    datamodule = instantiate(cfg.data, tokenizer=module.tokenizer)
    trainer.fit(module, datamodule=datamodule)  # an fp16 trainable weight would raise "unscale FP16 gradients"
    return trainer, module, probe


@pytest.fixture(scope="module", params=[False, True], ids=["text_encoder", "with_projection"])
def fp16_run(request, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    out = tmp_path_factory.mktemp("fp16")
    cfg = compose_config(
        "train", tiny_overrides(out, cache_dir, "trainer.max_epochs=1", f"model.projection={request.param}")
    )
    trainer, module, probe = fp16_fit(cfg, out)
    return out, cfg, trainer, module, probe


def test_fp16_frozen_parts_are_fp16_and_bit_identical(fp16_run) -> None:
    _, cfg, trainer, module, _ = fp16_run
    assert trainer.precision == "16-mixed"
    fresh = {
        "vae": AutoencoderKL.from_pretrained(cfg.model.pretrained, subfolder="vae"),
        "unet": UNet2DConditionModel.from_pretrained(cfg.model.pretrained, subfolder="unet"),
    }
    for name, reference in fresh.items():
        trained = getattr(module, name).state_dict()
        for key, tensor in reference.state_dict().items():
            assert trained[key].dtype == torch.float16, (name, key)
            assert torch.equal(trained[key], tensor.half()), (name, key)


def test_fp16_trainable_parts_stay_fp32_and_change(fp16_run) -> None:
    _, cfg, _, module, _ = fp16_run
    base = build_module(cfg)  # the same fresh weights (seeded build, from the same folder)
    names = ["text_encoder", *(["text_projection"] if cfg.model.projection else [])]
    assert sorted(module.trainable_names) == sorted(names)
    for name in names:
        trained, fresh = getattr(module, name).state_dict(), getattr(base, name).state_dict()
        assert all(t.dtype == torch.float32 for t in trained.values()), name
        changed = [k for k in fresh if not torch.equal(fresh[k], trained[k])]
        assert len(changed) > 0.9 * len(fresh), name


def test_fp16_overflow_and_nan_steps_are_skipped_with_a_sane_scaler(fp16_run) -> None:
    _, _, trainer, module, probe = fp16_run
    steps = probe.steps
    assert len(steps) >= NAN_STEP + 2, steps
    # step 0: gradients overflowed at 2**40; the scaler skipped the step and backed off to 2**16
    assert not steps[0]["moved"] and steps[0]["scale"] == INIT_SCALE * BACKOFF
    assert steps[1]["moved"]
    # the NaN-loss step: no backward, no scaler update, no weight change; training carries on
    assert not steps[NAN_STEP]["moved"] and steps[NAN_STEP]["scale"] == steps[NAN_STEP - 1]["scale"]
    assert all(s["moved"] for i, s in enumerate(steps) if i not in (0, NAN_STEP))
    assert module.nonfinite.total == 1
    scale = trainer.precision_plugin.scaler.get_scale()
    assert math.isfinite(scale) and 1.0 <= scale <= 2.0**16
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_fp16_checkpoint_loads_for_fp32_sampling(fp16_run, cache_dir: Path) -> None:
    out, _, _, module, _ = fp16_run
    sample_cfg = compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"])
    trained = {k: v.float() for k, v in module.trainable_state_dict().items()}
    for form in ("checkpoints/last.ckpt", "final_model"):
        loaded = build_model(sample_cfg.model, out / form)
        prepare_for_inference(loaded, torch.device("cpu"), "off")
        assert loaded.unet.dtype == loaded.vae.dtype == torch.float32
        weights = loaded.trainable_state_dict()
        assert weights.keys() == trained.keys()
        assert all(torch.equal(weights[k], trained[k]) for k in trained), form
    settings = SampleSettings.from_config(sample_cfg, ("a red circle",))
    image = generate(loaded, SampleSettings(**{**settings.__dict__, "steps": 2, "seed": 0}))[0]
    assert image.info["precision"] == "fp32"
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels.std() > 1.0  # a rendered picture, not a constant (NaN decodes to black)
