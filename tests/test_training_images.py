"""The SampleImages callback: on in the SD1.5 config, off for the tiny preset, and when turned on it logs
grids of the live model to TensorBoard without leaving it in eval mode or in another dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ldm.errors import SamplingError
from ldm.generation.checkpoints import build_model
from ldm.generation.pipeline import generate
from ldm.training.callbacks import SampleImages
from ldm.training.run import train
from tests.conftest import compose_config


def default_entry() -> dict:
    """The callback's arguments in the default (SD1.5) callbacks config."""
    entry = OmegaConf.to_container(compose_config("train", []).callbacks.sample_images)
    entry.pop("_target_")
    return entry


def test_on_in_the_default_config_with_few_steps_and_off_for_tiny(compose_train) -> None:
    default = compose_config("train", []).callbacks.sample_images
    assert default._target_ == "ldm.training.callbacks.SampleImages" and default.steps <= 20
    assert compose_train().callbacks.sample_images is None


def test_a_bad_setting_stops_before_training() -> None:
    with pytest.raises(SamplingError, match="scheduler='lms'"):
        SampleImages(**{**default_entry(), "scheduler": "lms"})


def test_logs_a_grid_every_epoch_and_keeps_the_module_training(compose_train, tmp_path: Path) -> None:
    cfg = compose_train("trainer.max_epochs=2")
    cfg.callbacks.sample_images = compose_config("train", []).callbacks.sample_images
    cfg.callbacks.sample_images.update(steps=2, prompts=["a red circle", "a blue square", "a green star"])
    trainer, module = train(cfg)

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    grids = events.Images("samples")
    steps_per_epoch = trainer.global_step // 2
    # epochs 1 and 2; the end of fit is the end of epoch 2, so it is not rendered twice
    assert [g.step for g in grids] == [steps_per_epoch, 2 * steps_per_epoch]
    assert (grids[0].width, grids[0].height) == (128, 128)  # 3 images of 64 px in a 2x2 grid
    assert grids[0].encoded_image_string != grids[1].encoded_image_string  # the text encoder learned

    assert module.training and module.text_encoder.training
    assert not module.unet.training and not module.vae.training
    assert module.text_encoder.dtype == torch.float32
    assert all(p.requires_grad for p in module.text_encoder.parameters())


def test_renders_a_module_whose_frozen_parts_are_half_as_under_16_mixed_on_a_gpu(cache_dir: Path) -> None:
    """setup() casts the frozen U-Net and VAE to fp16 on a GPU while the text encoder stays fp32 (AMP):
    the embeddings must follow the U-Net's dtype, and nothing of the module may change."""
    module = build_model(compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"]).model)
    module.unet.to(torch.float16)
    module.vae.to(torch.float16)
    module.train()
    callback = SampleImages(**{**default_entry(), "steps": 2, "prompts": ["a red circle"]})
    (image,) = generate(module, callback.settings)
    assert image.size == (64, 64)
    assert module.text_encoder.dtype == torch.float32 and module.unet.dtype == torch.float16
    assert module.training and module.text_encoder.training and not module.unet.training
