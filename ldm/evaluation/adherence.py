"""The shapes world's adherence judge in an evaluation (`judge=PATH`): does each image show the shape,
colour and position its prompt names? Scored with `ldm.world` (imported only when a judge is asked for).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ldm.errors import ConfigError


@dataclass(frozen=True)
class Judge:
    """A loaded attribute classifier (it passed its accuracy check when exported) and its report."""

    path: str
    model: Any  # ldm.world.judge.AttributeCNN
    report: dict[str, Any]


def load_judge(path: str) -> Judge:
    """The judge folder written by `python train.py experiment=shapes_judge`; ConfigError if absent."""
    from ldm.world.export import load_judge as load

    try:
        model, report = load(path)
    except FileNotFoundError:
        raise ConfigError(
            f"judge={path!r}: no judge there; run `python train.py experiment=shapes_judge` first, or judge=null"
        ) from None
    return Judge(str(Path(path)), model, report)


def adherence(
    judge: Judge, prompts: Sequence[str], seeds: Sequence[int], images: Mapping[str, Sequence[Image.Image]]
) -> dict[str, Any]:
    """Per-attribute adherence of each image set in `images` (by variant) on the prompts the judge can read.

    A prompt that names no (shape, colour, position) of the world (a Flickr8k caption) is not judged; if
    none can be read that is a ConfigError, since the numbers would be empty.
    """
    from ldm.world.adherence import Prompt, chance_levels, score
    from ldm.world.vocab import parse_caption

    judged = []
    for i, text in enumerate(prompts):
        parsed = parse_caption(text)
        if parsed is not None:
            judged.append((i, Prompt(text, parsed[0], parsed[1], seeds[i])))
    if not judged:
        raise ConfigError(
            f"judge={judge.path!r}: none of the {len(prompts)} prompts names a shape, colour and position"
        )
    size = judge.report["image_size"]
    result: dict[str, Any] = {
        "judge": judge.path,
        "judge_accuracy": judge.report.get("accuracy"),
        "judged_prompts": len(judged),
        "unreadable_prompts": len(prompts) - len(judged),
        "chance": chance_levels(),
    }
    for variant, variant_images in images.items():
        chosen = [variant_images[i] for i, _ in judged]
        if chosen[0].size != (size, size):
            raise ConfigError(f"judge={judge.path!r} reads {size} px images, but these are {chosen[0].size}")
        result[variant] = score(judge.model, chosen, [p for _, p in judged])
    return result
