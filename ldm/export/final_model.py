"""Write `final_model/`: every file of what a run trained, from the live module (end of fit) or a checkpoint.

Why one writer: train.py's export callback and `python -m ldm.export` must write the same files the same way,
so a file converted after the fact is the file the run would have written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextModel

from ldm.components import load_frozen_parts
from ldm.export import kohya_lora, single_file
from ldm.export.compvis_keys import LayoutError
from ldm.export.model_card import refresh_model_card, write_model_card
from ldm.training.adapters import ADAPTER_DIR, merged_text_encoder, save_adapter
from ldm.training.checkpoint_io import atomic_save_safetensors
from ldm.training.module import TextEncoderFineTuner

log = logging.getLogger(__name__)

WEIGHTS_FILE = "final_weights.safetensors"
INFO_FILE = "export.json"


def plain_text_encoder(module: TextEncoderFineTuner) -> CLIPTextModel:
    """The trained encoder as a plain CLIPTextModel (a LoRA adapter merged into a copy; the live model kept)."""
    return module.text_encoder if module.peft_model is None else merged_text_encoder(module.peft_model)


def sd_parts(module: TextEncoderFineTuner) -> tuple[Any, Any]:
    """U-Net and VAE for the single file: the module's own where they hold fp32 weights (a trained U-Net, or
    a model loaded for inference), else read from the base again, since training cast the frozen ones to
    fp16/bf16 and the file should not carry that rounding."""
    parts: dict[str, Any] = {}
    for name in ("unet", "vae"):
        part = getattr(module, name)
        if name in module.trainable_names or part.dtype == torch.float32:
            parts[name] = part
    if len(parts) < 2:
        hp = module.hparams
        base = load_frozen_parts(hp.pretrained, revision=hp.revision, variant=hp.variant)
        parts = {**base, **parts}
    return parts["unet"], parts["vae"]


def export_info(module: TextEncoderFineTuner, run: dict[str, Any] | None) -> dict[str, Any]:
    """export.json: what a checkpoint must agree with to load, and the run's facts for the card."""
    info = {
        **module.checkpoint_signature(),
        "prediction_type": module.noise_scheduler.config.prediction_type,
        "objective": module.objective_record(),  # evaluate.py flags a backbone that training optimised
    }
    return {**info, "run": run or {}}


def write_weights(module: TextEncoderFineTuner, folder: Path) -> Path:
    """`final_weights.safetensors`: the trained tensors alone (the adapter alone after LoRA), fp32."""
    weights = {k: v.detach().float().cpu().contiguous() for k, v in module.trainable_state_dict().items()}
    atomic_save_safetensors(weights, folder / WEIGHTS_FILE, {"format": "pt"})
    return folder / WEIGHTS_FILE


def write_tool_files(
    module: TextEncoderFineTuner,
    folder: Path,
    info: dict[str, Any],
    encoder: CLIPTextModel,
    *,
    single: bool,
    dtype: torch.dtype,
) -> list[Path]:
    """model.safetensors (if `single`), text_encoder.safetensors and lora.safetensors, each skipped with a
    one-line reason where the run's model has no such file."""
    written: list[Path] = []
    base, title = str(info["base"]), f"{folder.parent.name}/{folder.name}"
    reason = single_file.skip_reason(module.hparams.text_encoder, module.text_projection)
    if reason is not None:
        log.info("no model.safetensors or text_encoder.safetensors (single-file layout): %s", reason)
    else:
        if not single:
            log.info("no model.safetensors: callbacks.tool_files.single_file=false")
        else:
            try:
                unet, vae = sd_parts(module)
                path = folder / single_file.MODEL_FILE
                written.append(
                    single_file.write_single_file(path, unet, vae, encoder, dtype=dtype, base=base, title=title)
                )
            except LayoutError as err:  # e.g. a U-Net of another shape than SD1.x's (the shapes world's own)
                log.info("no model.safetensors: %s", err)
        path = folder / single_file.TEXT_ENCODER_FILE
        written.append(single_file.write_text_encoder(path, encoder, dtype=dtype, base=base, title=title))
    lora_reason = kohya_lora.skip_reason(module.adapter)
    if lora_reason is None:
        path = folder / kohya_lora.LORA_FILE
        written.append(
            kohya_lora.write_kohya_lora(path, module.peft_model, module.adapter, base, info.get("run") or {})
        )
    elif module.adapter is not None:
        log.info("no lora.safetensors: %s", lora_reason)
    return written


def export_final_model(module: TextEncoderFineTuner, folder: Path, *, run: dict[str, Any] | None = None) -> Path:
    """This project's files of `final_model/`: weights, save_pretrained folders, export.json, the card.

    With an adapter, final_weights.safetensors holds the adapter alone, adapter/ is peft's folder of it, and
    text_encoder/ the merged encoder (a plain CLIPTextModel for people who don't use peft).
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(module, folder)  # never a half-written file, even if killed here
    encoder = plain_text_encoder(module)
    if module.peft_model is not None:
        save_adapter(module.peft_model, folder / ADAPTER_DIR)
    for name in ("text_encoder", "unet"):
        if name in module.trainable_names:
            part = encoder if name == "text_encoder" else module.unet
            part.save_pretrained(folder / name, safe_serialization=True)
    module.tokenizer.save_pretrained(folder / "tokenizer")
    info = export_info(module, run)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    write_model_card(folder, info)
    return folder


def export_tool_files(
    module: TextEncoderFineTuner,
    folder: Path,
    *,
    run: dict[str, Any] | None = None,
    single: bool = True,
    dtype: torch.dtype = torch.float16,
) -> list[Path]:
    """The SD tools' files of `final_model/` (`write_tool_files`), then the card again, which lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = write_tool_files(
        module, folder, export_info(module, run), plain_text_encoder(module), single=single, dtype=dtype
    )
    refresh_model_card(folder)
    return written
