"""The tools' files of final_model/ on the tiny model: the single file read back by diffusers' from_single_file,
the round trip single file -> diffusers folder -> single file, the text encoder alone, kohya LoRA read by
diffusers' load_lora_weights, final_weights.safetensors (and old .pt files), the model card, `python -m ldm.export`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel

from ldm.errors import ConfigError
from ldm.export.compvis_keys import LayoutError, check_round_trip, to_compvis
from ldm.export.convert import ExportError, convert
from ldm.export.single_file import single_file_tensors
from ldm.generation.checkpoints import build_model
from ldm.generation.pipeline import generate
from ldm.generation.schedulers import make_scheduler
from ldm.generation.settings import SampleSettings
from ldm.tiny import ensure_tiny_pretrained, ensure_tiny_text_tower
from ldm.training.run import train
from tests.conftest import compose_config, tiny_overrides

PROMPTS = ("a red circle on the left", "a blue square")


def settings() -> SampleSettings:
    return SampleSettings(
        prompts=PROMPTS, negative_prompt="", steps=4, guidance_scale=5.0, guidance_interval=(0.0, 1.0),
        scheduler="ddim", seed=7, height=None, width=None, num_images=1, batch_size=2,
    )  # fmt: skip


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def sample_py_images(checkpoint: Path | None) -> np.ndarray:
    """What `sample.py model=tiny checkpoint=...` renders (guided on every step, as a plain diffusers pipeline)."""
    model = build_model(compose_config("sample", ["model=tiny"]).model, checkpoint).eval()
    return pixels(generate(model, settings()))


def pipeline_images(pipe: StableDiffusionPipeline) -> np.ndarray:
    chosen = settings()
    pipe.scheduler = make_scheduler(chosen.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pixels(
        pipe(
            list(chosen.prompts),
            negative_prompt=[""] * len(chosen.prompts),
            num_inference_steps=chosen.steps,
            guidance_scale=chosen.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(chosen.seed) for _ in chosen.prompts],
        ).images
    )


def from_single_file(path: Path, base: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(base), torch_dtype=torch.float32, local_files_only=True,
        safety_checker=None, requires_safety_checker=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A 1-epoch tiny run at a learning rate that moves the encoder well past fp16 rounding (≈6 s)."""
    ensure_tiny_pretrained(cache_dir / "tiny-sd15")
    out = tmp_path_factory.mktemp("export-run")
    train(compose_config("train", tiny_overrides(out, cache_dir, "optimizer.lr=1e-2", "trainer.max_epochs=1")))
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A 2-epoch tiny LoRA run, alpha 8 != rank 4 (so a file that drops the scale gives other images), ≈10 s."""
    ensure_tiny_pretrained(cache_dir / "tiny-sd15")
    out = tmp_path_factory.mktemp("lora-export")
    extra = ("model/adapter=lora", "model.adapter.alpha=8", "optimizer.lr=3e-2", "trainer.max_epochs=2")
    train(compose_config("train", tiny_overrides(out, cache_dir, *extra)))
    return out


def test_from_single_file_loads_model_safetensors_and_renders_sample_py_images(run: Path, cache_dir) -> None:
    final = run / "final_model"
    pipe = from_single_file(final / "model.safetensors", cache_dir / "tiny-sd15")
    with safe_open(final / "model.safetensors", "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v1"
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # the default single_file_dtype
    trained = CLIPTextModel.from_pretrained(final / "text_encoder").state_dict()
    base = CLIPTextModel.from_pretrained(cache_dir / "tiny-sd15", subfolder="text_encoder").state_dict()
    loaded = pipe.text_encoder.state_dict()
    assert set(loaded) == set(trained)
    assert max(float((loaded[k] - trained[k]).abs().max()) for k in trained) < 1e-3  # fp16 rounding
    assert max(float((base[k] - trained[k]).abs().max()) for k in trained) > 1e-2  # the fine-tuned one
    got, expected = pipeline_images(pipe), sample_py_images(final)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(got - sample_py_images(None)).max() > 1  # and not the base model's pictures


def test_single_file_to_diffusers_folder_and_back_gives_the_same_tensors(run: Path, cache_dir, tmp_path) -> None:
    original = load_file(run / "final_model" / "model.safetensors")
    from_single_file(run / "final_model" / "model.safetensors", cache_dir / "tiny-sd15").save_pretrained(
        tmp_path / "diffusers"
    )
    again = StableDiffusionPipeline.from_pretrained(tmp_path / "diffusers", torch_dtype=torch.float32)
    tensors = single_file_tensors(again.unet, again.vae, again.text_encoder, torch.float16)
    assert set(tensors) == set(original)
    assert all(torch.equal(tensors[k], original[k]) for k in original)


def test_a_wrong_key_mapping_is_caught_by_diffusers_reading_it_back(cache_dir: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_pretrained(cache_dir / "tiny-sd15"))
    unet, vae = pipe.unet.state_dict(), pipe.vae.state_dict()
    compvis = to_compvis(unet, pipe.unet.config, vae, pipe.vae.config, {})
    check_round_trip(compvis, unet, pipe.unet.config, vae, pipe.vae.config)  # the real mapping passes
    unrenamed = dict(compvis)
    key = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    unrenamed["model.diffusion_model.input_blocks.1.0.norm1.weight"] = unrenamed.pop(key)  # diffusers reads it
    with pytest.raises(LayoutError, match=r"1 single-file keys still carry diffusers names"):
        check_round_trip(unrenamed, unet, pipe.unet.config, vae, pipe.vae.config)
    misplaced = {k.replace("output_blocks.1.1.", "output_blocks.1.2."): v for k, v in compvis.items()}
    with pytest.raises(LayoutError, match=r"U-Net back differently: \d+ weights missing or reshaped"):
        check_round_trip(misplaced, unet, pipe.unet.config, vae, pipe.vae.config)


def test_text_encoder_safetensors_holds_the_encoder_in_the_single_file_layout(run: Path) -> None:
    final = run / "final_model"
    alone, whole = load_file(final / "text_encoder.safetensors"), load_file(final / "model.safetensors")
    assert alone and all(k.startswith("cond_stage_model.transformer.text_model.") for k in alone)
    assert all(torch.equal(t, whole[k]) for k, t in alone.items())
    assert {k for k in whole if k.startswith("cond_stage_model.")} == set(alone)
    assert whole["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # CompVis's 1x1 convs, as A1111 builds


def test_final_weights_safetensors_and_an_old_pt_load_the_same_weights(run: Path, tmp_path: Path) -> None:
    import shutil

    model_cfg = compose_config("sample", ["model=tiny"]).model
    new = build_model(model_cfg, run / "final_model" / "final_weights.safetensors").trainable_state_dict()
    old = shutil.copytree(run / "final_model", tmp_path / "old_final_model")
    torch.save(load_file(old / "final_weights.safetensors"), old / "final_weights.pt")  # a run before this change
    (old / "final_weights.safetensors").unlink()
    from_pt = build_model(model_cfg, old / "final_weights.pt").trainable_state_dict()
    assert set(from_pt) == set(new) and all(torch.equal(from_pt[k], new[k]) for k in new)
    with pytest.raises(Exception, match=r"holds tensors other than train\.py's trained weights"):
        build_model(model_cfg, run / "final_model" / "model.safetensors")


def test_kohya_lora_loads_in_diffusers_and_matches_the_merged_encoder(lora_run: Path, cache_dir: Path) -> None:
    final = lora_run / "final_model"
    tensors = load_file(final / "lora.safetensors")
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert all(float(t) == 8.0 for k, t in tensors.items() if k.endswith(".alpha"))
    with safe_open(final / "lora.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_sd_model_name"] == str((cache_dir / "tiny-sd15").resolve())
    pipe = StableDiffusionPipeline.from_pretrained(cache_dir / "tiny-sd15", torch_dtype=torch.float32)
    base_images = pipeline_images(pipe)
    pipe.load_lora_weights(str(final), weight_name="lora.safetensors")
    merged = sample_py_images(final / "text_encoder")
    assert np.abs(pipeline_images(pipe) - merged).max() <= 1
    assert np.abs(base_images - merged).max() > 1  # the LoRA changes the pictures


def test_no_single_file_for_a_projected_text_tower(tmp_path: Path, cache_dir: Path, caplog) -> None:
    tower = ensure_tiny_text_tower(cache_dir / "tiny-text-tower-16")
    extra = (f"model.text_encoder={tower}", "model.projection=true", "trainer.max_steps=2", "preservation.weight=0")
    with caplog.at_level(logging.INFO, logger="ldm.export.final_model"):
        train(compose_config("train", tiny_overrides(tmp_path, cache_dir, *extra)))
    files = {p.name for p in (tmp_path / "final_model").iterdir()}
    assert "model.safetensors" not in files and "text_encoder.safetensors" not in files
    assert "final_weights.safetensors" in files
    assert "learned projection (model.projection=true), which SD1.x lacks" in caplog.text
    with pytest.raises(ExportError, match=r"--to single-file: this checkpoint is not an SD1\.x model"):
        convert(tmp_path / "final_model", "single-file", out=tmp_path / "out", say=lambda _: None)


def test_single_file_off_and_a_bad_dtype(compose_train, tmp_path: Path) -> None:
    train(compose_train("callbacks.tool_files.single_file=false", "callbacks.tool_files.single_file_dtype=fp32"))
    final = tmp_path / "final_model"
    assert not (final / "model.safetensors").exists()
    assert next(iter(load_file(final / "text_encoder.safetensors").values())).dtype == torch.float32
    with pytest.raises(
        ConfigError, match=r"^callbacks\.tool_files\.single_file_dtype='half': expected one of \['fp16', 'bf16'"
    ):
        train(compose_train("callbacks.tool_files.single_file_dtype=half"))


def test_model_card_describes_the_run_and_takes_eval_json_figures(run: Path, tmp_path: Path) -> None:
    import shutil

    run = shutil.copytree(run, tmp_path / "run")
    card = ModelCard.load(run / "final_model" / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    info = json.loads((run / "final_model" / "export.json").read_text())
    assert f"| steps | {info['run']['steps']} (1 epochs) |" in card.text
    assert "val/loss" in card.text and "evaluate.py has not run yet" in card.text
    assert "StableDiffusionPipeline.from_single_file(" in card.text and "python sample.py checkpoint=" in card.text
    metrics = {"clip_score": {"vit_l14": {"base": 0.2101, "finetuned": 0.2345}}, "embedding_drift": {}}
    (run / "eval.json").write_text(json.dumps({"metrics": metrics}))
    convert(run, "text-encoder", say=lambda _: None)  # any export into final_model/ refreshes the card
    assert "| clip_score vit_l14 | 0.2101 | 0.2345 |" in (run / "final_model" / "README.md").read_text()


def test_export_cli_converts_each_checkpoint_form_to_the_same_files(run: Path, lora_run: Path, tmp_path) -> None:
    lines: list[str] = []
    reference = load_file(run / "final_model" / "model.safetensors")
    for form in ("checkpoints/last.ckpt", "final_model/final_weights.safetensors", "final_model"):
        written = convert(run / form, "single-file", out=tmp_path / form.replace("/", "-"), say=lines.append)
        tensors = load_file(written)
        assert set(tensors) == set(reference) and all(torch.equal(tensors[k], reference[k]) for k in reference)
    assert lines[:3] == [
        f"[1/3] reading {run / 'checkpoints/last.ckpt'}",
        "[2/3] converting to single-file (float16)",
        f"[3/3] wrote {tmp_path / 'checkpoints-last.ckpt' / 'model.safetensors'}",
    ]
    lora = convert(lora_run / "checkpoints" / "last.ckpt", "lora", out=tmp_path / "lora", say=lines.append)
    expected = load_file(lora_run / "final_model" / "lora.safetensors")
    assert all(torch.equal(load_file(lora)[k], expected[k]) for k in expected)
    folder = convert(run, "diffusers", out=tmp_path / "pipe", say=lines.append)
    assert pipeline_images(StableDiffusionPipeline.from_pretrained(folder)).shape == (2, 64, 64, 3)
    with pytest.raises(ExportError, match="--to lora: the run trained no adapter"):
        convert(run, "lora", out=tmp_path / "x", say=lines.append)
    with pytest.raises(ExportError, match=r"--to='onnx': expected one of single-file, text-encoder, lora, diffusers"):
        convert(run, "onnx", say=lines.append)
