"""A LoRA run's adapter as `lora.safetensors` in kohya's layout, the LoRA file A1111 and ComfyUI load.

Why diffusers' converter: `convert_state_dict_to_kohya` is the peft -> kohya mapping the field maintains
(lora_A/lora_B -> lora_down/lora_up, dots -> underscores). Two things are put right after it: it names the
text encoder `lora_te1_` (SDXL's first encoder) where SD1.x files say `lora_te_`, and it writes alpha = rank
(scale 1) where this run's scale is `model.adapter.alpha / rank`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft import PeftModel, get_peft_model_state_dict

from ldm.export.compvis_keys import with_text_model
from ldm.training.checkpoint_io import atomic_save_safetensors

LORA_FILE = "lora.safetensors"


def skip_reason(adapter: Mapping[str, Any] | None) -> str | None:
    """Why this run has no kohya LoRA file (None: it has one)."""
    if adapter is None:
        return "the run trained no adapter (model.adapter=null)"
    if adapter.get("trainable_token_ids"):
        return (
            "model.adapter.trainable_token_ids trained embedding rows, which kohya's LoRA layout cannot hold "
            "(use model.safetensors or text_encoder.safetensors, which have them merged)"
        )
    return None


def kohya_tensors(peft_model: PeftModel, alpha: float) -> dict[str, torch.Tensor]:
    """`lora_te_text_model_encoder_layers_N_..._proj.{lora_down.weight, lora_up.weight, alpha}`, fp32."""
    peft_keys = {
        f"text_encoder.{with_text_model(k.removeprefix('base_model.model.'))}": v.detach().float().cpu().contiguous()
        for k, v in get_peft_model_state_dict(peft_model).items()
        if ".lora_A." in k or ".lora_B." in k
    }
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in convert_state_dict_to_kohya(peft_keys).items()}
    return {k: torch.tensor(float(alpha)) if k.endswith(".alpha") else v for k, v in kohya.items()}


def kohya_metadata(adapter: Mapping[str, Any], base: str, run: Mapping[str, Any]) -> dict[str, str]:
    """kohya's `ss_*` header strings (what the UIs' metadata panels show): base, rank, alpha, modules, data."""
    dataset = {str(run.get("data", "unknown")): {"n_repeats": 1, "img_count": run.get("train_examples") or 0}}
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(adapter["rank"]),
        "ss_network_alpha": str(adapter["alpha"]),
        "ss_network_args": json.dumps({"target_modules": list(adapter["target_modules"])}),
        "ss_network_train_unet_only": "False",
        "ss_network_train_text_encoder_only": "True",
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": base,
        "ss_dataset_dirs": json.dumps(dataset),
        "ss_steps": str(run.get("steps", "")),
        "ss_epoch": str(run.get("epochs", "")),
        "ss_learning_rate": str(run.get("learning_rate", "")),
        "ss_training_comment": "text-encoder LoRA trained with ldm (frozen U-Net and VAE)",
    }


def write_kohya_lora(
    path: Path, peft_model: PeftModel, adapter: Mapping[str, Any], base: str, run: Mapping[str, Any]
) -> Path:
    """Write `lora.safetensors` (atomic)."""
    tensors = kohya_tensors(peft_model, adapter["alpha"])
    atomic_save_safetensors(tensors, path, kohya_metadata(adapter, base, run))
    return path
