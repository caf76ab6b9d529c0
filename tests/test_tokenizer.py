"""The offline CLIP tokenizer reproduces CLIP's own ids (reference ids from CLIP's tokenizer)."""

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR

REFERENCE = json.loads((Path(__file__).parent / "data" / "clip_token_vectors.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)


def test_vocabulary_is_clips(tokenizer: CLIPTokenizer) -> None:
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert "Permission is hereby granted" in (CLIP_TOKENIZER_DIR / "LICENSE").read_text()


@pytest.mark.parametrize("case", REFERENCE, ids=lambda c: c["text"][:24])
def test_ids_match_clip(tokenizer: CLIPTokenizer, case: dict) -> None:
    assert tokenizer(case["text"]).input_ids == case["input_ids"]


def test_pads_and_truncates_to_77(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer(["a dog " * 100, "a cat"], padding="max_length", max_length=77, truncation=True).input_ids
    assert [len(x) for x in ids] == [77, 77]
    assert ids[0][-1] == 49407
