"""Preservation (conf/preservation/): the original encoder's outputs for the preserved prompts are kept.

The encoder-level claim of the issue: after the same training run on the tiny model's captions, the
preserved prompts' embeddings move at least 5x less with preservation on than with it off (weight 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from ldm.data.preserve_prompts import load_preserve_prompts
from ldm.data.synthetic import write_captioned_images
from ldm.errors import ConfigError
from ldm.tiny import ensure_tiny_pretrained
from ldm.training.preservation import EmbeddingPreservation
from ldm.training.run import build_module, train
from tests.conftest import compose_config, tiny_overrides

# a few steps at a large lr, so that without preservation the encoder moves a lot
FAST = ("optimizer.lr=3e-3", "optimizer.weight_decay=0", "trainer.max_epochs=3", "trainer.deterministic=true")
PRESERVED = ["a photograph of a cat sitting on a windowsill", "a city skyline at night", "a bowl of fruit"]
PRESERVED_OVERRIDE = "data.preserve_prompts=[" + ",".join(f"'{p}'" for p in PRESERVED) + "]"


def embeddings(encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length)
    with torch.no_grad():
        return encoder.eval()(torch.tensor(ids["input_ids"]))[0]


def movement(out: Path, cache: Path, weight: float, *extra: str) -> float:
    """Mean squared movement of the preserved prompts' embeddings over one tiny training run."""
    cfg = compose_config(
        "train", tiny_overrides(out, cache, *FAST, f"preservation.weight={weight}", PRESERVED_OVERRIDE, *extra)
    )
    base = Path(ensure_tiny_pretrained(cache / "tiny-sd15"))
    before = embeddings(
        CLIPTextModel.from_pretrained(base / "text_encoder"),
        CLIPTokenizer.from_pretrained(base / "tokenizer"),
        PRESERVED,
    )
    trainer, module = train(cfg)
    assert trainer.global_step > 0
    after = embeddings(module.text_encoder, module.tokenizer, PRESERVED)
    return float(((after - before) ** 2).mean())


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, float]:
    return {w: movement(tmp_path_factory.mktemp(f"w{w}"), cache_dir, float(w)) for w in ("0", "10")}


def test_preserved_prompts_move_at_least_5x_less_with_preservation(moved: dict[str, float]) -> None:
    assert moved["0"] > 0, "without preservation the run must move the embeddings at all"
    assert moved["0"] >= 5 * moved["10"], f"movement without {moved['0']:.3g}, with {moved['10']:.3g}"


def test_preservation_works_with_lora(tmp_path: Path, cache_dir: Path) -> None:
    lora = ("model/adapter=lora", "model.adapter.rank=8", "model.adapter.alpha=8")
    off = movement(tmp_path / "off", cache_dir, 0.0, *lora)
    on = movement(tmp_path / "on", cache_dir, 10.0, *lora)
    assert off > 0 and off >= 5 * on, f"LoRA: movement without {off:.3g}, with {on:.3g}"


def test_teacher_is_the_encoder_the_run_started_from(compose_train) -> None:
    """Before any step the preservation loss is exactly zero: the teacher is the live encoder's own output."""
    module = build_module(compose_train(PRESERVED_OVERRIDE))
    module.preservation.cache_teacher(module)
    module.text_encoder.eval()
    assert module.preservation.loss(module).item() == 0.0
    assert module.preservation.drift(module) == 0.0


def test_weight_zero_switches_it_off(compose_train) -> None:
    module = build_module(compose_train("preservation.weight=0"))
    assert module.preservation is None


def test_learning_check_is_not_fooled_by_the_preservation_gradient(compose_train, monkeypatch) -> None:
    """Conditioning cut from the encoder: weight decay moves the weights and preservation pulls them back, so
    gradients exist; the check must still stop the run because the task loss gives none."""
    from ldm.training.module import TextEncoderFineTuner

    real = TextEncoderFineTuner.encode_text
    monkeypatch.setattr(
        TextEncoderFineTuner, "encode_text", lambda self, ids: real(self, ids).detach().requires_grad_()
    )
    with pytest.raises(
        RuntimeError, match="learning check failed: the training loss gives the trainable weights no gradient"
    ):
        train(compose_train(PRESERVED_OVERRIDE, "optimizer.weight_decay=0.1"))


def test_prompts_from_a_shipped_list_a_file_and_a_folder(tmp_path: Path) -> None:
    generic = load_preserve_prompts("generic")
    assert len(generic) >= 150 and len(set(generic)) == len(generic)
    (tmp_path / "mine.txt").write_text("a red car\n\n  a blue boat  \n", encoding="utf-8")
    assert load_preserve_prompts(str(tmp_path / "mine.txt")) == ["a red car", "a blue boat"]
    root = write_captioned_images(tmp_path / "set", layout="original", num_images=10, image_size=64, seed=0)
    captions = load_preserve_prompts(str(root))
    assert captions == sorted(set(captions)) and len(captions) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": -1.0, "prompts": "generic", "batch_size": 4}, r"preservation.weight=-1.0: expected a number ≥ 0"),
        ({"weight": 1.0, "prompts": "generic", "batch_size": 0}, r"preservation.batch_size=0: expected an integer ≥ 1"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EmbeddingPreservation(**kwargs)


def test_a_missing_prompt_file_names_the_key_and_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.preserve_prompts='.*nope.txt': expected a text file .*generic"):
        load_preserve_prompts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected at least one prompt"):
        load_preserve_prompts(str(tmp_path / "empty.txt"))
