"""LoRA adapters (peft) on the CLIP text encoder: build, merge and save them.

Why peft's own LoRA: its layers, merging and `save_pretrained` folder are what the field loads
(`PeftModel.from_pretrained`), so an adapter trained here works elsewhere. peft injects its layers into the
text encoder in place: the module stays a `CLIPTextModel` (pipelines and `encode_text` are unchanged) and
only the adapter's tensors require gradients, so checkpoints hold a few MB instead of the whole tower.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import CLIPTextModel

from ldm.errors import expect, is_int

KINDS = ("lora",)
KEYS = ("kind", "rank", "alpha", "dropout", "target_modules", "trainable_token_ids")
ADAPTER_DIR = "adapter"  # inside final_model/: peft's save_pretrained folder


def normalize_adapter(adapter: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`model.adapter` checked and in one canonical form (it is part of the checkpoint signature)."""
    if adapter is None:
        return None
    adapter = dict(adapter)
    unknown = sorted(set(adapter) - set(KEYS))
    expect(not unknown, "model.adapter", unknown, f"only the keys {list(KEYS)}")
    expect(adapter.get("kind") in KINDS, "model.adapter.kind", adapter.get("kind"), f"one of {list(KINDS)}")
    rank, alpha, dropout = adapter.get("rank"), adapter.get("alpha"), adapter.get("dropout", 0.0)
    expect(is_int(rank) and rank >= 1, "model.adapter.rank", rank, "an integer ≥ 1")
    expect(isinstance(alpha, int | float) and alpha > 0, "model.adapter.alpha", alpha, "a number > 0")
    expect(isinstance(dropout, int | float) and 0 <= dropout < 1, "model.adapter.dropout", dropout, "0 ≤ p < 1")
    targets = adapter.get("target_modules")
    expect(
        isinstance(targets, list | tuple) and bool(targets) and all(isinstance(t, str) for t in targets),
        "model.adapter.target_modules",
        targets,
        "a non-empty list of module names, e.g. [q_proj, k_proj, v_proj, out_proj, fc1, fc2]",
    )
    ids = adapter.get("trainable_token_ids")
    expect(
        ids is None or (isinstance(ids, list | tuple) and bool(ids) and all(is_int(i) and i >= 0 for i in ids)),
        "model.adapter.trainable_token_ids",
        ids,
        "null or a non-empty list of token ids",
    )
    return {
        "kind": adapter["kind"],
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "target_modules": sorted(targets),
        "trainable_token_ids": None if ids is None else sorted({int(i) for i in ids}),
    }


def apply_adapter(text_encoder: CLIPTextModel, adapter: Mapping[str, Any]) -> PeftModel:
    """Inject LoRA (and trainable token rows) into `text_encoder` in place; only they require grad after.

    The returned `PeftModel` wraps the same modules (its `base_model.model` is `text_encoder`): it is kept
    for merging and `save_pretrained`, not as a second copy of the weights.
    """
    missing = [
        t for t in adapter["target_modules"] if not any(n.endswith(f".{t}") for n, _ in text_encoder.named_modules())
    ]
    expect(not missing, "model.adapter.target_modules", missing, "names of Linear layers in the text encoder")
    vocab = text_encoder.config.vocab_size
    ids = adapter["trainable_token_ids"]
    expect(
        ids is None or max(ids) < vocab, "model.adapter.trainable_token_ids", ids, f"ids below the vocabulary {vocab}"
    )
    config = LoraConfig(
        r=adapter["rank"],
        lora_alpha=adapter["alpha"],
        lora_dropout=adapter["dropout"],
        target_modules=list(adapter["target_modules"]),
        trainable_token_indices=None if ids is None else list(ids),
    )
    peft_model = get_peft_model(text_encoder, config)
    assert peft_model.base_model.model is text_encoder  # in place: the module keeps its class and its name
    return peft_model


def merged_text_encoder(peft_model: PeftModel) -> CLIPTextModel:
    """A plain `CLIPTextModel` with the adapter folded into its weights (the live model is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def save_adapter(peft_model: PeftModel, folder: Path) -> None:
    """peft's adapter folder (adapter_config.json, adapter_model.safetensors): `PeftModel.from_pretrained`
    loads it onto the base text encoder."""
    peft_model.save_pretrained(folder, safe_serialization=True)
