"""Does a checkpoint fit the model it is loaded onto? The check, and the error that names what differs.

Why its own module: the generation side loads checkpoints too (ldm/generation/checkpoints.py) and must
refuse one for another base or trainable set with the same message as training does.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ldm.errors import UserError

log = logging.getLogger(__name__)
OPTION = {"base": "model.pretrained", "text_encoder": "model.text_encoder"}


class CheckpointMismatchError(UserError):
    """A checkpoint was made for another base model or another trainable set."""


def same_source(a: str | None, b: str | None) -> bool:
    """Hub ids compare as strings; local folders by their real path."""
    if a is None or b is None:
        return a == b
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def _moved_here(key: str, recorded: str | None, current: str | None) -> bool:
    """A run folder moved to another machine: its recorded local folder is not here.

    Then a local folder the user chose stands in for it (the weights' shapes are still checked), with a warning;
    anything else (the config's default hub id) is refused with the option that fixes it, never used silently.
    """
    gone = recorded is not None and os.path.isabs(recorded) and not os.path.isdir(recorded)
    if not gone:
        return False
    if current is not None and os.path.isdir(current):
        log.warning(
            "%s=%r recorded in the checkpoint is not on this machine: using %r in its place", key, recorded, current
        )
        return True
    raise CheckpointMismatchError(
        f"checkpoint was trained on {key}={recorded!r}, which is not on this machine (a run folder moved here?): "
        f"pass {OPTION[key]}=PATH, your copy of it, instead of {current!r}"
    )


def check_checkpoint_fits(
    checkpoint: dict[str, Any], expected: dict[str, Any], weights: dict[str, torch.Tensor]
) -> None:
    """Raise `CheckpointMismatchError` naming what differs between a checkpoint and the model."""
    meta = checkpoint.get("ldm")
    if meta is None:
        raise CheckpointMismatchError(
            "this checkpoint has no 'ldm' metadata: it was not written by this project's train.py"
        )
    if sorted(meta["trainable"]) != expected["trainable"]:
        raise CheckpointMismatchError(
            f"checkpoint trains {sorted(meta['trainable'])} but this model trains {expected['trainable']} "
            f"(set model.trainable / model.projection to match the checkpoint)"
        )
    if meta.get("adapter") != expected.get("adapter"):
        raise CheckpointMismatchError(
            f"checkpoint was trained with model.adapter={meta.get('adapter')} but this model has "
            f"{expected.get('adapter')} (choose model/adapter=... and its keys to match the checkpoint)"
        )
    for key in ("base", "text_encoder"):
        if not same_source(meta.get(key), expected[key]) and not _moved_here(key, meta.get(key), expected[key]):
            raise CheckpointMismatchError(
                f"checkpoint was trained on {key}={meta.get(key)!r} but this model uses {expected[key]!r}"
            )
    state = checkpoint["state_dict"]
    missing = sorted(set(weights) - set(state))
    unexpected = sorted(set(state) - set(weights))
    wrong_shape = [k for k in weights if k in state and tuple(state[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(
            "checkpoint weights do not fit this model: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} with another shape (e.g. {wrong_shape[:3]})"
        )
