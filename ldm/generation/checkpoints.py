"""Read what `train.py` writes, in any of its three forms, and build the fine-tuned model for sampling.

Why one reader: a user hands `checkpoint=PATH` the file or folder they have at hand, a Lightning
`.ckpt`, `final_model/final_weights.safetensors` (an older run's `final_weights.pt`) or the exported
`final_model/` folder, and every form records the base model it was trained on, so `checkpoint=` alone
is enough to rebuild the model. A LoRA run's forms hold the adapter alone and rebuild the model with it;
its `final_model/text_encoder/` (the merged encoder) loads as a full text encoder instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import UNet2DConditionModel
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from transformers import CLIPTextModel

from ldm.errors import UserError
from ldm.training.checkpoint_fit import check_checkpoint_fits
from ldm.training.checkpoint_io import CheckpointLoadError, load_weights_file
from ldm.training.module import TextEncoderFineTuner

ACCEPTED_FORMS = (
    "a Lightning .ckpt written by train.py (e.g. outputs/DATE/TIME/checkpoints/last.ckpt), "
    "final_model/final_weights.safetensors or an older final_weights.pt (with export.json beside it), "
    "or an exported final_model/ folder (export.json, text_encoder/), or a LoRA run's merged final_model/text_encoder/"
)
PROJECTION = "text_projection"
WEIGHTS_FILES = (
    "final_weights.safetensors",
    "final_weights.pt",
)  # the newest first; .pt: older runs, read weights-only
TRAINED_PREFIXES = ("text_encoder.", "unet.", f"{PROJECTION}.")

Form = Literal["lightning", "weights", "export", "merged"]


class CheckpointError(UserError):
    """A checkpoint path that is missing, unreadable or of no form this project writes."""


class ModelLoadError(UserError, RuntimeError):
    """The base model (or a separate text tower) could not be loaded or built."""


@dataclass(frozen=True)
class FineTunedWeights:
    """The trainable weights of one run and the metadata needed to rebuild the model they fit."""

    path: str
    form: Form
    meta: dict[str, Any]  # base, revision, text_encoder, trainable (sorted, "text_projection" included), adapter,
    # objective (what training optimised: {"name": "diffusion"} or the reward and its model; None if unrecorded)
    prediction_type: str | None
    state_dict: dict[str, torch.Tensor]

    def model_kwargs(self) -> dict[str, Any]:
        """`TextEncoderFineTuner` arguments that rebuild the model these weights were trained on."""
        trainable = [name for name in self.meta["trainable"] if name != PROJECTION]
        return {
            "pretrained": self.meta["base"],
            "revision": self.meta.get("revision"),
            "text_encoder": self.meta.get("text_encoder"),
            "projection": PROJECTION in self.meta["trainable"],
            "trainable": trainable,
            "prediction_type": self.prediction_type,
            "adapter": self.meta.get("adapter"),
        }


def _torch_load(path: Path) -> Any:
    """Tensors and plain data only (safetensors, or `weights_only=True`): a checkpoint never runs code when read."""
    try:
        return load_weights_file(path)
    except CheckpointLoadError as err:
        raise CheckpointError(f"{err} Expected {ACCEPTED_FORMS}.") from None


def _read_export_json(folder: Path, path: Path) -> dict[str, Any]:
    info_path = folder / "export.json"
    if not info_path.is_file():
        raise CheckpointError(
            f"checkpoint={str(path)!r}: no export.json in {str(folder)!r}, so the base model it was trained on "
            f"is unknown; expected {ACCEPTED_FORMS}"
        )
    try:
        info = json.loads(info_path.read_text())
        _ = info["base"], info["trainable"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(info_path)!r} is not an export.json written by train.py ({err})") from None
    return info


def _meta(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "base": info["base"],
        "revision": info.get("revision"),
        "text_encoder": info.get("text_encoder"),
        "trainable": sorted(info["trainable"]),
        "adapter": info.get("adapter"),
        "objective": info.get("objective"),  # what training optimised; None in checkpoints from before it was kept
    }


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_file(path: Path) -> FineTunedWeights:
    obj = _torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        if "ldm" not in obj:
            raise CheckpointError(
                f"checkpoint={str(path)!r} is a Lightning checkpoint without 'ldm' metadata: "
                "it was not written by this project's train.py"
            )
        hparams = obj.get("hyper_parameters") or {}
        return FineTunedWeights(
            str(path), "lightning", _meta(obj["ldm"]), hparams.get("prediction_type"), dict(obj["state_dict"])
        )
    if _is_tensor_dict(obj):
        if not all(k.startswith(TRAINED_PREFIXES) for k in obj):
            raise CheckpointError(
                f"checkpoint={str(path)!r} holds tensors other than train.py's trained weights (e.g. "
                f"{next(k for k in obj if not k.startswith(TRAINED_PREFIXES))!r}: a file for other tools such as "
                f"the single-file model.safetensors); expected {ACCEPTED_FORMS}"
            )
        info = _read_export_json(path.parent, path)
        return FineTunedWeights(str(path), "weights", _meta(info), info.get("prediction_type"), obj)
    raise CheckpointError(f"checkpoint={str(path)!r} holds neither a Lightning checkpoint nor a weights dict")


def _weights_file(folder: Path, why: str) -> Path:
    """The folder's final_weights file (safetensors, else an older run's .pt), or an error saying why it's needed."""
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"checkpoint={str(folder)!r} {why} but has no {' or '.join(WEIGHTS_FILES)}")


def _read_folder(path: Path, merged: bool = False) -> FineTunedWeights:
    """An exported folder: weights from its `save_pretrained` sub-folders (projection from final_weights).

    A LoRA export's adapter is read from final_weights; `merged` reads its merged text_encoder/ instead,
    as a full text encoder without an adapter.
    """
    info = _read_export_json(path, path)
    meta = _meta(info)
    if meta["adapter"] is not None and not merged:
        weights_file = _weights_file(path, "was trained with an adapter")
        return FineTunedWeights(str(path), "export", meta, info.get("prediction_type"), _torch_load(weights_file))
    meta["adapter"] = None
    loaders = {"text_encoder": CLIPTextModel, "unet": UNet2DConditionModel}
    state: dict[str, torch.Tensor] = {}
    for name in meta["trainable"]:
        if name == PROJECTION:
            weights_file = _weights_file(path, "trains a text projection")
            weights = _torch_load(weights_file)
            state.update({k: v for k, v in weights.items() if k.startswith(f"{PROJECTION}.")})
            continue
        sub = path / name
        if name not in loaders or not sub.is_dir():
            raise CheckpointError(f"checkpoint={str(path)!r} trains {name!r} but has no {name}/ folder")
        try:
            part = loaders[name].from_pretrained(sub)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"could not read {str(sub)!r}: {err}") from None
        state.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
    form: Form = "merged" if merged else "export"
    return FineTunedWeights(str(path), form, meta, info.get("prediction_type"), state)


def read_checkpoint(path: str | os.PathLike) -> FineTunedWeights:
    """Detect the form of `path` and return its weights and metadata, or raise `CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint={str(path)!r} does not exist; expected {ACCEPTED_FORMS}")
    merged = path.name == "text_encoder" and not (path / "export.json").is_file()
    if path.is_dir() and merged and (path.parent / "export.json").is_file():  # a LoRA run's merged encoder
        return _read_folder(path.parent, merged=True)
    return _read_folder(path) if path.is_dir() else _read_file(path)


def _looks_local(source: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a folder on this machine."""
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1


def build_model(
    model_cfg: DictConfig,
    checkpoint: str | os.PathLike | FineTunedWeights | None = None,
    *,
    base_override: bool = False,
) -> TextEncoderFineTuner:
    """The model `model_cfg` describes, with the fine-tuned weights of `checkpoint` loaded onto it.

    With a checkpoint its recorded base, text tower, trainable set and prediction type win over `model_cfg`;
    `base_override=True` (the user chose `model=` or `model.pretrained=`) keeps `model_cfg.pretrained` as the
    base, e.g. a local copy of the hub model, and the weights must still fit it.
    """
    if checkpoint is None or isinstance(checkpoint, FineTunedWeights):
        weights = checkpoint
    else:
        weights = read_checkpoint(checkpoint)
    cfg = model_cfg.copy()
    overrides = {} if weights is None else weights.model_kwargs()
    if base_override:
        overrides.pop("pretrained", None)
    for key, value in overrides.items():
        cfg[key] = value  # replaces e.g. the tiny resolver, so an unused default is never built
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    target = get_class(kwargs.pop("_target_"))
    kwargs.pop("_convert_", None)
    base = str(kwargs["pretrained"])
    if _looks_local(base) and not Path(base).expanduser().is_dir():
        hint = " (recorded in the checkpoint; pass model.pretrained=PATH to use another copy)"
        raise ModelLoadError(f"base model folder {base!r} not found{hint if weights and not base_override else ''}")
    try:
        module = target(**kwargs)
    except (OSError, ValueError) as err:
        hint = "" if _looks_local(base) else " (a hub id needs the network once, or pass model.pretrained=FOLDER)"
        raise ModelLoadError(f"could not load the base model {base!r}: {err}{hint}") from None
    if weights is not None:
        expected = module.checkpoint_signature()
        if base_override:
            expected["base"] = weights.meta["base"]  # the user chose this base: only the weights must fit
        saved = {"ldm": weights.meta, "state_dict": weights.state_dict}
        check_checkpoint_fits(saved, expected, module.trainable_state_dict())
        module.load_state_dict(weights.state_dict, strict=False)
    return module
