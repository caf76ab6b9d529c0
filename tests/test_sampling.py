"""Sampling on the tiny model: determinism, PNG files and metadata, schedulers, checkpoint forms, errors, CLI."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldm.errors import SamplingError
from ldm.generation.checkpoints import CheckpointError, ModelLoadError, build_model
from ldm.generation.loading import prepare_for_inference
from ldm.generation.output import png_bytes, save_images
from ldm.generation.pipeline import build_pipeline, encode_prompts, generate
from ldm.generation.schedulers import SCHEDULERS, make_scheduler
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.training.checkpoint_fit import CheckpointMismatchError
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
FORMS = ["checkpoints/last.ckpt", "final_model/final_weights.safetensors", "final_model"]


def sample_config(cache_dir: Path, *overrides: str):
    return compose_config("sample", ["model=tiny", f"paths.cache_dir={cache_dir}", *overrides])


def settings(cfg, *prompts: str, **changes) -> SampleSettings:
    base = SampleSettings.from_config(cfg, prompts or ("a red circle on the left",))
    return SampleSettings(**{**base.__dict__, "steps": 2, "seed": 3, **changes})


@pytest.fixture(scope="module")
def cfg(cache_dir: Path):
    return sample_config(cache_dir)


@pytest.fixture(scope="module")
def model(cfg):
    module = build_model(cfg.model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    return module


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_seed_gives_the_same_png_bytes_and_other_seeds_differ(model, cfg) -> None:
    first, again = generate(model, settings(cfg)), generate(model, settings(cfg))
    assert png_bytes(first[0]) == png_bytes(again[0])
    other = generate(model, settings(cfg, seed=4))[0]
    assert np.abs(pixels(other) - pixels(first[0])).max() > 0


def test_a_seed_gives_the_same_image_whatever_the_batch_size(model, cfg) -> None:
    one_by_one = generate(model, settings(cfg, num_images=2, batch_size=1))
    together = generate(model, settings(cfg, num_images=2, batch_size=2))
    assert [im.info["seed"] for im in together] == [3, 4]
    for a, b in zip(one_by_one, together, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def diffusers_images(model, chosen: SampleSettings, **options) -> list[Image.Image]:
    """diffusers' own one-call pipeline on the same conditioning and seeds: what `generate` must reproduce."""
    positive = encode_prompts(model, list(chosen.prompts))
    negative = encode_prompts(model, [chosen.negative_prompt]).expand_as(positive)
    pipe = build_pipeline(model, chosen.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=chosen.steps,
        guidance_scale=chosen.guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(chosen.seed) for _ in chosen.prompts],
        output_type="pil",
        **options,
    ).images


def test_staged_generation_matches_diffusers_own_decode_in_the_same_call(model, cfg) -> None:
    """`generate` denoises to latents and decodes after: the images are the one-call pipeline's, to the byte."""
    chosen = settings(cfg, "a red circle on the left", "a blue square", batch_size=2, guidance_interval=(0.0, 1.0))
    staged = generate(model, chosen)  # every step guided: the pipeline's own CFG, with nothing in between
    direct = diffusers_images(model, chosen)
    assert [image.tobytes() for image in staged] == [image.tobytes() for image in direct]


def test_guidance_rescale_is_diffusers_own_and_recorded(model, cfg) -> None:
    """guidance_rescale reaches the pipeline as diffusers' own option: the same pixels as a direct call with it,
    other pixels than plain guidance, and the PNG says which."""
    chosen = settings(cfg, "a red circle on the left", guidance_interval=(0.0, 1.0), guidance_rescale=0.7)
    rescaled = generate(model, chosen)[0]
    direct = diffusers_images(model, chosen, guidance_rescale=0.7)[0]
    assert rescaled.tobytes() == direct.tobytes()
    plain = generate(model, SampleSettings(**{**chosen.__dict__, "guidance_rescale": 0.0}))[0]
    assert np.abs(pixels(plain) - pixels(rescaled)).max() > 0
    assert rescaled.info["guidance_rescale"] == 0.7 and "guidance_rescale" not in plain.info


def test_release_models_frees_the_text_encoder_and_unet_and_keeps_the_images(cfg) -> None:
    """sample.py's one-shot mode: the same images, and the parts it no longer needs are gone afterwards."""
    module = build_model(cfg.model)
    prepare_for_inference(module, torch.device("cpu"), "off")
    chosen = settings(cfg, num_images=3, batch_size=2)  # two pipeline calls, both decoded after the U-Net is gone
    kept = generate(module, chosen)
    released = generate(module, chosen, release_models=True)
    assert [image.tobytes() for image in released] == [image.tobytes() for image in kept]
    assert module.text_encoder is None and module.unet is None and module.vae is not None


def test_files_are_named_by_prompt_and_seed_with_metadata_and_a_grid(model, cfg, tmp_path: Path) -> None:
    images = generate(
        model,
        settings(cfg, "A dog, running!", "a cat", num_images=2, negative_prompt="blurry"),
        checkpoint="ckpt/last.ckpt",
    )
    paths = save_images(images, tmp_path)
    names = [p.name for p in paths]
    assert names == [
        "a-dog-running-3.png",
        "a-dog-running-4.png",
        "a-cat-3.png",
        "a-cat-4.png",
        "grid-a-dog-running-3-4.png",
    ]
    text = Image.open(paths[1]).text
    assert text == {
        "prompt": "A dog, running!",
        "negative_prompt": "blurry",
        "seed": "4",
        "steps": "2",
        "scheduler": "dpm++",
        "guidance_scale": "7.5",
        "height": "64",
        "width": "64",
        "checkpoint": "ckpt/last.ckpt",
        "model": str(cfg.model.pretrained),
        "precision": "fp32",
        "deep_cache": "off",
        "guidance_interval": "[0.2, 0.8]",  # the default; every step guided ([0, 1]) records none
    }
    grid = Image.open(paths[-1])
    assert grid.size == (128, 128) and grid.text["seed"] == "3,4,3,4"


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_renders(model, cfg, name: str) -> None:
    (image,) = generate(model, settings(cfg, scheduler=name, height=72, width=64))
    assert image.size == (64, 72) and image.info["scheduler"] == name
    if name == "ddim":
        assert make_scheduler(name, model.noise_scheduler.config).config.clip_sample is False


def test_karras_sigmas_refuse_a_zero_terminal_snr_base(model) -> None:
    """Karras sigmas start at the largest sigma, infinite under zero-terminal SNR: a clear error, not noise."""
    # as a zero-SNR base saves it (diffusers drops keys listed in _use_default_values when it loads a config)
    config = {k: v for k, v in model.noise_scheduler.config.items() if k != "_use_default_values"}
    zero_snr = {**config, "rescale_betas_zero_snr": True}
    with pytest.raises(SamplingError, match=r"scheduler='dpm\+\+_karras': Karras sigmas .* zero-terminal SNR"):
        make_scheduler("dpm++_karras", zero_snr)
    assert make_scheduler("dpm++_karras", model.noise_scheduler.config).config.use_karras_sigmas is True
    assert make_scheduler("unipc", zero_snr).config.rescale_betas_zero_snr is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": ("  ",)}, "prompt is empty"),
        ({"prompts": ()}, "no prompt"),
        ({"height": 60}, r"height=60: expected .* multiple of 8"),
        ({"width": 4096}, "width=4096: expected 64 to 2048"),
        ({"steps": 0}, r"steps=0: expected an integer ≥ 1"),
        ({"steps": 5000}, "at most 1000"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"seed": -1}, "seed=-1"),
        ({"scheduler": "lms"}, "expected one of ddim, dpm\\+\\+, euler, euler_a, pndm, dpm\\+\\+_karras, unipc"),
        ({"num_images": 0}, "num_images"),
        ({"guidance_rescale": 1.5}, r"guidance_rescale=1.5: expected a number in \[0, 1\]"),
    ],
)
def test_bad_settings_are_clear_errors(cfg, changes: dict, message: str) -> None:
    with pytest.raises(SamplingError, match=message):
        validate_settings(settings(cfg, **changes), Limits(**cfg.limits))


def test_a_prompt_over_77_tokens_warns_how_many_were_cut(model, cfg, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ldm.generation.pipeline"):
        generate(model, settings(cfg, "dog " * 100, steps=1))
    assert "is 102 tokens but CLIP reads 77: the last 25 tokens were cut" in caplog.text


def test_a_projected_text_tower_conditions_through_encode_text(cfg, cache_dir: Path) -> None:
    from ldm.tiny import ensure_tiny_text_tower

    tower = ensure_tiny_text_tower(cache_dir / "tiny-text-tower-16")
    module = build_model(sample_config(cache_dir, f"model.text_encoder={tower}", "model.projection=true").model)
    (image,) = generate(module, settings(cfg, steps=1))
    assert module.text_projection is not None and image.size == (64, 64)


# --- checkpoints ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_each_checkpoint_form_loads_the_fine_tuned_weights(tiny_run: Path, cfg, form: str) -> None:
    trained = load_file(tiny_run / "final_model" / "final_weights.safetensors")
    module = build_model(cfg.model, tiny_run / form)
    loaded = module.trainable_state_dict()
    assert set(loaded) == set(trained)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    base = build_model(cfg.model).trainable_state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in trained)  # training moved them


def test_checkpoint_alone_uses_its_recorded_base_and_model_pretrained_overrides(tiny_run, cache_dir, tmp_path) -> None:
    recorded = build_model(compose_config("sample", []).model, tiny_run / "final_model")  # SD1.5 is not touched
    assert Path(recorded.hparams.pretrained) == cache_dir / "tiny-sd15"
    copy = shutil.copytree(cache_dir / "tiny-sd15", tmp_path / "copy-of-base")
    chosen = build_model(
        sample_config(cache_dir, f"model.pretrained={copy}").model, tiny_run / "final_model", base_override=True
    )
    assert Path(chosen.hparams.pretrained) == copy


def test_wrong_checkpoints_are_clear_errors(tiny_run: Path, cfg, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist; expected a Lightning \.ckpt"):
        build_model(cfg.model, tmp_path / "nope.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="can't be loaded safely"):
        build_model(cfg.model, tmp_path / "notes.ckpt")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(tiny_run / "final_model" / "final_weights.safetensors", lonely)
    with pytest.raises(CheckpointError, match=r"no export\.json"):
        build_model(cfg.model, lonely / "final_weights.safetensors")
    with pytest.raises(CheckpointError, match=r"no export\.json"):
        build_model(cfg.model, lonely)

    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    key = "text_encoder.embeddings.token_embedding.weight"
    ckpt["state_dict"][key] = ckpt["state_dict"][key][:, :16]
    torch.save(ckpt, tmp_path / "other-width.ckpt")
    with pytest.raises(CheckpointMismatchError, match="1 with another shape"):
        build_model(cfg.model, tmp_path / "other-width.ckpt")
    ckpt["ldm"]["base"] = str(tmp_path / "deleted-base")
    torch.save(ckpt, tmp_path / "moved-base.ckpt")
    with pytest.raises(ModelLoadError, match=r"deleted-base' not found .*model\.pretrained=PATH"):
        build_model(cfg.model, tmp_path / "moved-base.ckpt")


# --- the command line -------------------------------------------------------------------------------
def run_sample(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "sample.py", f"hydra.run.dir={tmp_path / 'hydra'}", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_sample_py_writes_pngs_for_a_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    result = run_sample(
        tmp_path,
        f"checkpoint={ckpt}",
        "prompt=A dog running on the beach",
        "steps=2",
        "seed=5",
        "num_images=2",
        "threads=1",
        f"out_dir={tmp_path / 'out'}",
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert [Path(p).name for p in printed] == [
        "a-dog-running-on-the-beach-5.png",
        "a-dog-running-on-the-beach-6.png",
        "grid-a-dog-running-on-the-beach-5-2.png",
    ]
    assert Image.open(printed[0]).text["checkpoint"] == str(ckpt)
    assert "2/2" in result.stderr  # the per-step progress bar


def test_sample_py_bad_input_exits_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = run_sample(
        tmp_path, "model=tiny", f"paths.cache_dir={tmp_path}", "prompt=a dog", "checkpoint=/no/such.ckpt"
    )
    assert result.returncode == 2
    assert "error: checkpoint='/no/such.ckpt' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
