"""Fast sampling paths (ldm/fast_sampling.py): exact where they should be, running where they approximate."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from ldm.generation import fast as fast_sampling
from ldm.generation.checkpoints import build_model
from ldm.generation.fast import DeepCache, FastSampling, FastSamplingError
from ldm.generation.loading import load_for_inference, prepare_for_inference
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from ldm.hardware import cpu_has_native_bf16
from ldm.tiny import tiny_pipeline
from tests.conftest import compose_config


def sd_layout_unet() -> UNet2DConditionModel:
    """SD1.5's block layout (cross-attention in the first down and last up block, 2 layers) at toy width."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    ).eval()


UNETS = {"tiny": lambda: tiny_pipeline().unet.eval(), "sd-layout": sd_layout_unet}


@pytest.mark.parametrize("layout", list(UNETS))
def test_a_shallow_call_on_the_same_input_returns_the_full_call(layout: str) -> None:
    unet = UNETS[layout]()
    x, context, t = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.tensor(500)
    with torch.no_grad():
        full = unet(x, t, context).sample
        for branch in range(len(unet.down_blocks[0].resnets) + 1):
            with DeepCache(unet, interval=3, branch=branch) as cache:
                first, second = unet(x, t, context).sample, unet(x, t, context).sample
                third = unet(x * 0.5, t, context).sample  # shallow on other input: stale deep features
            assert cache.kinds == ["full", "shallow", "shallow"]
            assert torch.equal(first, full) and torch.equal(second, full), branch
            assert not torch.allclose(third, unet(x * 0.5, t, context).sample)
    assert "forward" not in unet.__dict__  # the class's forward is back


def test_unsupported_settings_are_clear_errors() -> None:
    unet = sd_layout_unet()
    with pytest.raises(FastSamplingError, match=r"deep_cache.branch=3: expected 0 to 2"):
        DeepCache(unet, interval=3, branch=3)
    for dtype, cache, message in [
        ("fp16", {"interval": 1, "branch": 0}, "dtype='fp16': expected one of auto, fp32, bf16"),
        ("auto", {"interval": 0, "branch": 0}, r"deep_cache.interval=0: expected an integer ≥ 1"),
        ("auto", {"interval": 2}, "expected {interval: N, branch: B}"),
    ]:
        with pytest.raises(FastSamplingError, match=message):
            FastSampling.from_config(dtype, cache, torch.device("cpu"))


# --- through generate, on the tiny model --------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg(cache_dir: Path):
    return compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"])


@pytest.fixture(scope="module")
def model(cfg):
    module = build_model(cfg.model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    return module


def render(
    model, cfg, options: FastSampling | None, steps: int = 6, seed: int = 3
) -> tuple[np.ndarray, dict[str, Any]]:
    """One 64 px image of the tiny model with `options` installed (then removed again), every step guided."""
    fast_sampling.install(model, options)
    try:
        base = SampleSettings.from_config(cfg, ("a red circle on the left",))
        settings = SampleSettings(**{**base.__dict__, "steps": steps, "seed": seed, "guidance_interval": (0.0, 1.0)})
        (image,) = generate(model, settings)
    finally:
        fast_sampling.install(model, None)
    return np.asarray(image, dtype=np.int16), image.info


def test_deep_cache_interval_1_gives_the_plain_image(model, cfg) -> None:
    plain, info = render(model, cfg, None)
    same, same_info = render(model, cfg, FastSampling(autocast_bf16=False, interval=1, branch=0))
    assert np.array_equal(plain, same)
    assert info["precision"] == same_info["precision"] == "fp32" and same_info["deep_cache"] == "off"


@pytest.mark.parametrize("branch", [0, 1])
def test_deep_cache_reuses_features_and_stays_close_to_the_plain_image(model, cfg, branch: int) -> None:
    """An approximation, not garbage: measured 1.9 (branch 0) and 1.3 (branch 1) mean 8-bit levels from the
    plain image, against 37 for the same prompt under another seed."""
    plain, _ = render(model, cfg, None)
    cached, info = render(model, cfg, FastSampling(autocast_bf16=False, interval=3, branch=branch))
    other_seed, _ = render(model, cfg, None, seed=4)
    distance = np.abs(cached - plain).mean()
    assert cached.shape == plain.shape and distance > 0  # the cache was used ...
    assert distance < 6 and distance < 0.2 * np.abs(other_seed - plain).mean()  # ... and kept the picture
    assert info["deep_cache"] == f"interval=3,branch={branch}"


def test_both_sides_of_guidance_are_encoded_under_the_same_precision(model, cfg, monkeypatch) -> None:
    """With bf16 autocast the negative prompt must be encoded inside it too (issue 13, item 4): the same
    text then gives bit-identical conditional and unconditional embeddings."""
    calls: list[tuple[bool, torch.Tensor]] = []
    real = type(model).encode_text

    def spy(ids: torch.Tensor) -> torch.Tensor:
        out = real(model, ids)
        calls.append((torch.is_autocast_enabled("cpu"), out))
        return out

    monkeypatch.setattr(model, "encode_text", spy)
    with nullcontext() if cpu_has_native_bf16() else pytest.warns(UserWarning, match="17-374x slower"):
        options = FastSampling.from_config("bf16", {"interval": 1, "branch": 0}, torch.device("cpu"))
    fast_sampling.install(model, options)
    try:
        base = SampleSettings.from_config(cfg, ("a red circle on the left",))
        settings = SampleSettings(**{**base.__dict__, "steps": 1, "seed": 3, "negative_prompt": base.prompts[0]})
        generate(model, settings)
    finally:
        fast_sampling.install(model, None)
    assert len(calls) == 2 and [enabled for enabled, _ in calls] == [True, True]
    assert torch.equal(calls[0][1], calls[1][1])


def test_deep_cache_calls_full_then_shallow_per_generation(model, cfg, monkeypatch) -> None:
    seen: list[list[str]] = []
    enter = DeepCache.__exit__

    def record(self, *exc):
        seen.append(list(self.kinds))
        return enter(self, *exc)

    monkeypatch.setattr(DeepCache, "__exit__", record)
    render(model, cfg, FastSampling(autocast_bf16=False, interval=3, branch=1), steps=5)
    render(model, cfg, FastSampling(autocast_bf16=False, interval=3, branch=1), steps=5)
    assert seen == [["full", "shallow", "shallow", "full", "shallow"]] * 2  # a fresh cache per pipeline call


def test_bf16_autocast_renders_close_to_fp32(model, cfg) -> None:
    plain, _ = render(model, cfg, None)
    with nullcontext() if cpu_has_native_bf16() else pytest.warns(UserWarning, match="17-374x slower"):
        options = FastSampling.from_config("bf16", {"interval": 1, "branch": 0}, torch.device("cpu"))
    fast, info = render(model, cfg, options, steps=2)
    plain2, _ = render(model, cfg, None, steps=2)
    assert info["precision"] == "bf16-autocast"
    assert np.abs(fast - plain2).mean() < 8  # same picture up to bf16 rounding (8-bit pixels)
    assert plain.shape == fast.shape


def test_load_for_inference_installs_the_configured_options(cache_dir: Path) -> None:
    cfg = compose_config(
        "sample", ["model=tiny", f"paths.cache_dir={cache_dir}", "dtype=fp32", "deep_cache.interval=2", "threads=1"]
    )
    module = load_for_inference(cfg, base_override=True)
    assert fast_sampling.installed(module) == FastSampling(autocast_bf16=False, interval=2, branch=0)
    overrides = ["deep_cache.interval=2", "deep_cache.branch=9"]
    bad = compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}", *overrides])
    with pytest.raises(FastSamplingError, match=r"deep_cache\.branch=9"):
        load_for_inference(bad, base_override=True)
