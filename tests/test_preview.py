"""Step previews (latents -> RGB by a linear map, never a VAE decode) and sample.py's progress line."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from benchmarks.common import SD15_CONFIG_DIR
from ldm.generation.checkpoints import build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.pipeline import generate
from ldm.generation.preview import SD15_LATENT_RGB, fit_latent_rgb, is_sd15_vae, latent_preview_for
from ldm.generation.progress import RunProgress, clock, step_callback
from ldm.generation.settings import SampleSettings
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def model(cache_dir):
    cfg = compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}"])
    module = build_model(cfg.model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    return module


def test_sd15_vae_gets_the_published_factors_and_others_a_fitted_map(model) -> None:
    config = json.loads((SD15_CONFIG_DIR / "vae" / "config.json").read_text())
    sd15_vae = AutoencoderKL.from_config(config)
    assert is_sd15_vae(sd15_vae) and not is_sd15_vae(model.vae)

    class Stub:  # only the VAE is looked at
        vae = sd15_vae

    preview = latent_preview_for(Stub())
    assert preview.source == "sd15" and torch.equal(preview.factors, torch.tensor(SD15_LATENT_RGB))
    assert latent_preview_for(model).source == "fitted"


def test_the_fitted_map_predicts_held_out_decodes_better_than_their_mean(model) -> None:
    preview = fit_latent_rgb(model.vae, side=8)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(123))  # not the fitting latents
    with torch.no_grad():
        decoded = F.adaptive_avg_pool2d(model.vae.decode(latents / model.vae.config.scaling_factor).sample, 8)
    predicted = torch.einsum("bchw,cd->bdhw", latents, preview.factors) + preview.bias[:, None, None]
    error = (predicted - decoded).pow(2).mean()
    baseline = (decoded - decoded.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()
    # the tiny VAE is random, hence far from linear: a trained VAE (SD1.5's) is much closer to its map
    assert error < 0.9 * baseline, (float(error), float(baseline))
    assert (predicted - decoded).abs().mean() < (
        torch.einsum("bchw,cd->bdhw", latents, preview.factors.flip(0)) + preview.bias[:, None, None] - decoded
    ).abs().mean()


def test_a_preview_is_an_rgb_image_of_the_latent_grid() -> None:
    from ldm.generation.preview import LatentPreview

    preview = LatentPreview(torch.tensor(SD15_LATENT_RGB), torch.zeros(3), "sd15")
    latents = torch.zeros(4, 64, 48)
    latents[0, :, :24] = 3.0  # channel 0 is mostly brightness: the left half is light
    image = preview.image(latents)
    assert image.mode == "RGB" and image.size == (48, 64)
    assert image.getpixel((0, 0)) > image.getpixel((47, 0)) == (128, 128, 128)


def test_run_progress_is_one_line_for_the_run_and_writes_previews(model, tmp_path) -> None:
    settings = SampleSettings(("a red circle", "a blue square"), "", 4, 7.5, "dpm++", 3, None, None, 1, 1)
    lines = io.StringIO()
    watch = RunProgress(2, 1, preview=latent_preview_for(model), preview_every=2, out_dir=tmp_path, stream=lines)
    generate(model, settings, on_step=step_callback(watch))
    updates = lines.getvalue().split("\r")[1:]
    assert len(updates) == 8 and lines.getvalue().count("\n") == 1  # one line, rewritten each step
    assert updates[0].startswith("image 1/2 · step 1/4") and updates[-1].startswith("image 2/2 · step 4/4")
    assert "left" in updates[0] and updates[-1].rstrip().endswith("0:00 left")
    names = sorted(p.name for p in tmp_path.glob("preview-*.png"))
    assert names == [f"preview-image0{i}-step00{s}.png" for i in (1, 2) for s in (2, 4)]
    assert Image.open(tmp_path / names[0]).size == (8, 8)


def test_clock() -> None:
    assert clock(83) == "1:23" and clock(3725) == "1:02:05" and clock(0.4) == "0:00"


def test_a_bad_preview_every_is_a_clear_error() -> None:
    from ldm.errors import SamplingError
    from ldm.generation.progress import check_preview_every

    check_preview_every(0)
    with pytest.raises(SamplingError, match=r"preview_every=-1: expected 0 \(none\) or an integer N ≥ 1"):
        check_preview_every(-1)
