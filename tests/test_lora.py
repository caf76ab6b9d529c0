"""LoRA adapters on the tiny model: adapter-only checkpoints, loading every form, the merged export, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.errors import ConfigError
from ldm.generation.checkpoints import build_model
from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from ldm.tiny import ensure_tiny_pretrained
from ldm.training.checkpoint_fit import CheckpointMismatchError
from ldm.training.run import build_module, train
from tests.conftest import compose_config, tiny_overrides

TOKENS = [320, 1125]  # "a", "red": rows of the token embedding that learn beside the LoRA matrices
LORA = (
    "model/adapter=lora",
    f"model.adapter.trainable_token_ids={TOKENS}",
    "optimizer.lr=1e-2",
    "trainer.deterministic=true",
)
PROMPTS = ("a red circle on the left", "a blue square")


def lora_cfg(out: Path, cache: Path, *extra: str):
    return compose_config("train", tiny_overrides(out, cache, *LORA, *extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """One 2-epoch tiny LoRA run (≈10 s)."""
    ensure_tiny_pretrained(cache_dir / "tiny-sd15")  # written first: its seeding would change this run's LoRA init
    out = tmp_path_factory.mktemp("lora-run")
    trainer, module = train(lora_cfg(out, cache_dir, "trainer.max_epochs=2"))
    return out, trainer, module


def images(module, **changes) -> np.ndarray:
    settings = SampleSettings(
        prompts=PROMPTS, negative_prompt="", steps=3, guidance_scale=3.0, scheduler="ddim", seed=5,
        height=None, width=None, num_images=1, batch_size=2, **changes,
    )  # fmt: skip
    return np.stack([np.asarray(im, dtype=np.int16) for im in generate(module, settings)])


def test_checkpoints_hold_the_adapter_alone(run) -> None:
    out, _, module = run
    adapter_keys = module.adapter_keys
    assert adapter_keys and all(("lora_" in k or "trainable_tokens_delta" in k) for k in adapter_keys)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == adapter_keys
    assert ckpt["ldm"]["adapter"]["rank"] == 4 and ckpt["ldm"]["adapter"]["trainable_token_ids"] == TOKENS
    weights = load_file(out / "final_model" / "final_weights.safetensors")
    assert set(weights) == adapter_keys
    full = (out / "final_model" / "text_encoder" / "model.safetensors").stat().st_size  # the whole (merged) encoder
    assert (out / "final_model" / "final_weights.safetensors").stat().st_size < 0.05 * full
    assert (out / "checkpoints" / "last.ckpt").stat().st_size < 0.05 * 3 * full  # vs weights + 2 Adam moments


def test_frozen_base_weights_do_not_change_and_the_adapter_does(run, cache_dir: Path) -> None:
    _, _, module = run
    fresh = CLIPTextModel.from_pretrained(cache_dir / "tiny-sd15", subfolder="text_encoder").state_dict()
    live = module.text_encoder.state_dict()
    for name, tensor in live.items():
        if f"text_encoder.{name}" in module.adapter_keys:
            continue
        base_name = name.replace(".base_layer", "").replace(".token_adapter", "")
        assert torch.equal(tensor, fresh[base_name]), name
    lora_b = [t for k, t in live.items() if "lora_B" in k]
    assert all(t.abs().sum() > 0 for t in lora_b)  # LoRA's B starts at zero: non-zero means it learned
    deltas = [t for k, t in live.items() if "trainable_tokens_delta" in k]
    assert deltas and deltas[0].shape[0] == len(TOKENS) and deltas[0].abs().sum() > 0


@pytest.mark.parametrize("form", ["checkpoints/last.ckpt", "final_model/final_weights.safetensors", "final_model"])
def test_save_load_gives_identical_images(run, form: str) -> None:
    out, _, module = run
    expected = images(module)
    loaded = build_model(compose_config("sample", ["model=tiny"]).model, out / form)
    assert loaded.adapter == module.adapter and loaded.peft_model is not None
    np.testing.assert_array_equal(images(loaded), expected)
    base = build_model(compose_config("sample", ["model=tiny"]).model, None)
    assert np.abs(images(base) - expected).max() > 0  # the adapter changes the pictures


def test_merged_export_equals_the_adapter_path(run, cache_dir: Path) -> None:
    out, _, module = run
    ids = module.tokenizer(list(PROMPTS), padding="max_length", max_length=77, return_tensors="pt").input_ids
    module.eval()
    with torch.no_grad():
        adapter_out = module.text_encoder(ids)[0]
        merged = CLIPTextModel.from_pretrained(out / "final_model" / "text_encoder").eval()  # plain transformers
        torch.testing.assert_close(merged(ids)[0], adapter_out, rtol=1e-4, atol=1e-5)
        base = CLIPTextModel.from_pretrained(cache_dir / "tiny-sd15", subfolder="text_encoder")
        peft = PeftModel.from_pretrained(base, out / "final_model" / "adapter").eval()  # peft's own folder
        torch.testing.assert_close(peft(input_ids=ids)[0], adapter_out, rtol=1e-4, atol=1e-5)
    loaded = build_model(compose_config("sample", ["model=tiny"]).model, out / "final_model" / "text_encoder")
    assert loaded.adapter is None and loaded.peft_model is None  # sample.py's checkpoint= takes the merged form
    np.testing.assert_allclose(images(loaded), images(module), atol=2)


def test_resume_is_exact(run, cache_dir: Path, tmp_path: Path) -> None:
    _, _, module = run
    first = tmp_path / "first"
    train(lora_cfg(first, cache_dir, "trainer.max_epochs=1"))
    resumed_dir = tmp_path / "resumed"
    trainer, resumed = train(
        lora_cfg(resumed_dir, cache_dir, "trainer.max_epochs=2", f"ckpt_path={first}/checkpoints/last.ckpt")
    )
    assert trainer.current_epoch == 2
    expected, got = module.trainable_state_dict(), resumed.trainable_state_dict()
    assert set(got) == set(expected) == module.adapter_keys
    diffs = {name: float((got[name] - tensor).abs().max()) for name, tensor in expected.items()}
    assert not any(diffs.values()), diffs


def test_an_adapter_mismatch_is_refused(run, cache_dir: Path, tmp_path: Path) -> None:
    out, _, _ = run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for overrides in ([*LORA[:2], "model.adapter.rank=8"], []):
        other = build_module(compose_config("train", tiny_overrides(tmp_path, cache_dir, *overrides)))
        with pytest.raises(CheckpointMismatchError, match=r"model\.adapter="):
            other.on_load_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.adapter.rank=0", "model.adapter.rank=0"),
        ("model.adapter.target_modules=[nope]", "names of Linear layers"),
        ("model.adapter.trainable_token_ids=[99999]", "below the vocabulary"),
    ],
)
def test_bad_adapter_settings_are_clear_errors(compose_train, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_module(compose_train("model/adapter=lora", override))


def test_shapes_lora_trains_the_rows_of_exactly_the_new_words(tmp_path: Path) -> None:
    """The ids in conf/experiment/shapes_lora.yaml are the new vocabulary's tokens that no base caption uses."""
    from ldm.world.vocab import ATTRIBUTES, BASE, NEW

    cfg = compose_config("train", ["experiment=shapes_lora", f"paths.output_dir={tmp_path}"])
    tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)

    def ids(text: str) -> set[int]:
        return set(tokenizer(text, add_special_tokens=False).input_ids)

    base = set().union(*(ids(p) for a in ATTRIBUTES for p in BASE.words[a].values()))
    base |= set().union(*(ids(t.format(shape="", colour="", position="")) for t in (*BASE.templates, *BASE.held_out)))
    new = set().union(*(ids(p) for a in ATTRIBUTES for p in NEW.words[a].values())) - base
    assert list(cfg.model.adapter.trainable_token_ids) == sorted(new)


@pytest.mark.slow
def test_demo_extras_name_their_experiments(tmp_path: Path) -> None:
    """demo.py's flag: an unknown extra is refused before any stage runs; the known ones compose."""
    import subprocess
    import sys

    from tests.helpers import ROOT, train_cli_env

    demo = [sys.executable, str(ROOT / "demo.py"), f"paths.cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([*demo, "extras=[shapes_nope]"], env=train_cli_env(), capture_output=True, text=True)
    assert done.returncode != 0 and "extras='shapes_nope'" in done.stderr and "shapes_lora" in done.stderr
    assert not (tmp_path / "shapes").exists()  # refused before the world was built
    cfg = compose_config("demo", ["extras=[shapes_lora,shapes_reward]", f"paths.output_dir={tmp_path}"])
    for extra in cfg.extras:
        stages = cfg.extra_stages[extra]
        assert stages[-1] == extra
        train = compose_config("train", [f"experiment={extra}", f"paths.output_dir={tmp_path}"])
        assert train.callbacks.adherence.judge.endswith("/judge")  # adherence is always the evaluation judge's
    assert f"model.text_encoder={tmp_path}/final_model" in list(cfg.stage_overrides.shapes_reward)
