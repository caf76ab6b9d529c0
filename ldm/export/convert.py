"""`python -m ldm.export`: convert any checkpoint train.py wrote into one of the tools' files, after the fact.

Why through `build_model`: it is sample.py's own reader of the three checkpoint forms (a Lightning .ckpt,
final_weights, final_model/), so whatever sample.py loads converts, with the base recorded in it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ldm.config import register_resolvers
from ldm.errors import UserError, expect
from ldm.export import kohya_lora, single_file
from ldm.export.final_model import INFO_FILE, plain_text_encoder, sd_parts
from ldm.export.model_card import refresh_model_card
from ldm.generation.checkpoints import build_model
from ldm.training.module import TextEncoderFineTuner

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TARGETS = ("single-file", "text-encoder", "lora", "diffusers")


class ExportError(UserError):
    """A conversion this checkpoint can't have (e.g. --to lora of a run without an adapter)."""


def export_defaults() -> DictConfig:
    """train.py's own `callbacks.tool_files` settings (single_file_dtype): the YAML holds them once."""
    return OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml").tool_files


def resolve_source(path: Path) -> Path:
    """A run folder means its final_model/ (else its checkpoints/last.ckpt); anything else is itself."""
    if path.is_dir() and (path / "final_model" / INFO_FILE).is_file():
        return path / "final_model"
    if path.is_dir() and (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    return path


def run_info(source: Path) -> dict[str, Any]:
    """The run's export.json (its `run` facts feed the kohya metadata), when the checkpoint sits in a run."""
    for folder in (source, source.parent, source.parent.parent / "final_model"):
        if (folder / INFO_FILE).is_file():
            return json.loads((folder / INFO_FILE).read_text())
    return {}


def load_model(source: Path, base: str | None) -> TextEncoderFineTuner:
    """sample.py's model for `source` (its recorded base, or `base` = model.pretrained= when given), fp32."""
    register_resolvers()
    overrides = [] if base is None else [f"model.pretrained={base}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=overrides)
    model = build_model(cfg.model, source, base_override=base is not None)
    return model.requires_grad_(False).eval()


def _require_sd(model: TextEncoderFineTuner, target: str) -> None:
    reason = single_file.skip_reason(model.hparams.text_encoder, model.text_projection)
    if reason is not None:
        raise ExportError(f"--to {target}: this checkpoint is not an SD1.x model: {reason}")


def write_target(model: TextEncoderFineTuner, target: str, out: Path, dtype: torch.dtype, info: dict) -> Path:
    """Write one target into the folder `out`; returns the file or folder written."""
    base, title = str(model.checkpoint_signature()["base"]), f"{out.parent.name}/{out.name}"
    out.mkdir(parents=True, exist_ok=True)
    if target == "lora":
        reason = kohya_lora.skip_reason(model.adapter)
        if reason is not None:
            raise ExportError(f"--to lora: {reason}")
        path = out / kohya_lora.LORA_FILE
        return kohya_lora.write_kohya_lora(path, model.peft_model, model.adapter, base, info.get("run") or {})
    _require_sd(model, target)
    encoder = plain_text_encoder(model)
    if target == "text-encoder":
        path = out / single_file.TEXT_ENCODER_FILE
        return single_file.write_text_encoder(path, encoder, dtype=dtype, base=base, title=title)
    unet, vae = sd_parts(model)
    if target == "single-file":
        path = out / single_file.MODEL_FILE
        return single_file.write_single_file(path, unet, vae, encoder, dtype=dtype, base=base, title=title)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=model.tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(model.noise_scheduler.config),  # SD1.5's own pipeline scheduler
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "diffusers", safe_serialization=True)
    return out / "diffusers"


def convert(
    source: Path,
    target: str,
    *,
    out: Path | None = None,
    dtype: str | None = None,
    base: str | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Convert `source` (a run folder or any checkpoint form) to `target`; prints one progress line per stage."""
    expect(target in TARGETS, "--to", target, f"one of {', '.join(TARGETS)}", ExportError)
    chosen = single_file.single_file_dtype(dtype or export_defaults().single_file_dtype, "--dtype")
    if not source.exists():
        raise ExportError(f"{str(source)!r} does not exist: expected a run folder or a checkpoint train.py wrote")
    source = resolve_source(source)
    out = out or (source if source.is_dir() else source.parent.parent / f"export-{source.stem}")
    say(f"[1/3] reading {source}")
    model = load_model(source, base)
    precision = "fp32" if target in ("lora", "diffusers") else str(chosen).removeprefix("torch.")
    say(f"[2/3] converting to {target} ({precision})")
    written = write_target(model, target, out, chosen, run_info(source))
    refresh_model_card(out)  # a final_model/ folder: its card lists the new file
    say(f"[3/3] wrote {written}")
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line; a user mistake is one line on stderr and exit status 2."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ldm.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run folder, a .ckpt, final_weights.* or final_model/")
    parser.add_argument("--to", required=True, choices=TARGETS, help="the file to write")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: final_model/ or export-NAME/)")
    parser.add_argument("--dtype", default=None, help="fp16 | bf16 | fp32 (default: callbacks.tool_files')")
    parser.add_argument("--base", default=None, help="another copy of the base model (as model.pretrained=)")
    args = parser.parse_args(argv)
    try:
        convert(args.source, args.to, out=args.out, dtype=args.dtype, base=args.base)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
