"""Adherence: does a generated image show the shape, colour and position its prompt names?

Generation goes through `ldm.generation.pipeline.generate` (the path of sample.py and the app); the judge is the
attribute classifier of `ldm.world.judge`, accepted only after its accuracy check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ldm.generation.pipeline import generate
from ldm.generation.settings import SampleSettings
from ldm.training.module import TextEncoderFineTuner
from ldm.world.judge import AttributeCNN
from ldm.world.scenes import all_combinations
from ldm.world.vocab import ATTRIBUTES, VALUES, VOCABULARIES

TEMPLATE_SETS = ("held_out", "train")


@dataclass(frozen=True)
class Prompt:
    text: str
    vocabulary: str
    attributes: dict[str, str]
    seed: int


@dataclass(frozen=True)
class SamplingPlan:
    """How adherence images are rendered (conf: callbacks.adherence)."""

    steps: int
    guidance_scale: float
    scheduler: str
    seed: int
    batch_size: int
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # the fractions of the schedule guided (sample.py's)
    guidance_rescale: float = 0.0  # diffusers' guidance_rescale (conf/sampling/image.yaml)


def chance_levels() -> dict[str, float]:
    """Accuracy of a uniform guess per attribute (the prompt sets are balanced over all combinations)."""
    return {a: 1.0 / len(VALUES[a]) for a in ATTRIBUTES}


def eval_prompts(vocabulary: str, count: int, templates: str, seed: int) -> list[Prompt]:
    """`count` prompts cycling through all 120 attribute combinations (balanced once count is a multiple).

    templates: `held_out` (sentences never written to the world's caption files) or `train`. Prompt i's
    seed is `seed + i`: each prompt its own noise, so `count` prompts are `count` independent draws.
    """
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates={templates!r}: expected one of {TEMPLATE_SETS}")
    vocab = VOCABULARIES[vocabulary]
    sentences = vocab.held_out if templates == "held_out" else vocab.templates
    combos = all_combinations()
    # a stride coprime with 120 spreads neighbouring prompts (rendered in one batch) over all attributes
    order = [combos[(7 * i) % len(combos)] for i in range(count)]
    return [
        Prompt(vocab.caption(attrs, sentences[i % len(sentences)]), vocabulary, attrs, seed + i)
        for i, attrs in enumerate(order)
    ]


def render(model: TextEncoderFineTuner, prompts: Sequence[Prompt], plan: SamplingPlan, desc: str) -> list[Image.Image]:
    """One image per prompt from its own seed, `plan.batch_size` prompts per `generate` call."""
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(prompts), plan.batch_size), desc=desc, unit="batch", leave=False):
        chunk = prompts[start : start + plan.batch_size]
        settings = SampleSettings(
            prompts=tuple(p.text for p in chunk),
            negative_prompt="",
            steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            scheduler=plan.scheduler,
            seed=chunk[0].seed,
            height=None,
            width=None,
            num_images=1,
            batch_size=len(chunk),
            guidance_interval=plan.guidance_interval,
            guidance_rescale=plan.guidance_rescale,
        )
        images += generate(model, settings, prompt_seeds=[p.seed for p in chunk])
    return images


def to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, 3, H, W) in [-1, 1], as the judge was trained."""
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def score(judge: AttributeCNN, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> dict[str, float]:
    """Per-attribute share of images whose judged value is the one the prompt names, and their mean."""
    predicted = judge.predict(to_pixels(images))
    result = {}
    for attr in ATTRIBUTES:
        wanted = torch.tensor([VALUES[attr].index(p.attributes[attr]) for p in prompts])
        result[attr] = float((predicted[attr] == wanted).float().mean())
    result["mean"] = float(np.mean([result[a] for a in ATTRIBUTES]))
    return result


def accuracy_by_value(predicted: Mapping[str, torch.Tensor], prompts: Sequence[Prompt]) -> dict[str, Any]:
    """Per attribute value: the share of its prompts judged right, its 95% interval, and what was seen instead.

    Why: the mean over an attribute's values hides a single word the text encoder never learned (one of
    five positions at chance reads as 80% on the position mean). `predicted`: the judge's class index per
    image and attribute (`AttributeCNN.predict`), in the order of `prompts`.
    """
    result: dict[str, Any] = {}
    for attr in ATTRIBUTES:
        seen: dict[str, Counter[str]] = {value: Counter() for value in VALUES[attr]}
        for prompt, index in zip(prompts, predicted[attr].tolist(), strict=True):
            seen[prompt.attributes[attr]][VALUES[attr][index]] += 1
        result[attr] = {}
        for value, counts in seen.items():
            n = sum(counts.values())
            if n == 0:
                continue
            share = counts[value] / n
            instead = {other: c for other, c in counts.most_common() if other != value}
            interval = list(wilson_interval(share, n))
            result[attr][value] = {"accuracy": share, "n": n, "ci95": interval, "instead": instead}
    return result


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `share` observed on `n` trials.

    Why Wilson: with 120 prompts and shares near 0 or 1 the normal interval leaves [0, 1]; Wilson does not.
    """
    if n <= 0:
        raise ValueError(f"n={n!r}: expected at least one trial")
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def with_intervals(scores: dict[str, float], n: int) -> dict[str, Any]:
    """`score`'s shares plus `n` and a 95% interval for each attribute and for the mean.

    The mean's interval is Wilson's at n images with the mean as the share: an upper bound on its spread
    whatever the correlation between one image's three attributes (so it is conservative, never too narrow).
    """
    return {**scores, "n": n, "ci95": {key: list(wilson_interval(value, n)) for key, value in scores.items()}}


def difference_interval(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float]:
    """Newcombe's 95% interval for share a - share b from each (share, low, high) Wilson triple.

    It assumes independent samples; the same prompts and seeds before and after make the two shares
    positively correlated, which only narrows the true interval, so this one is conservative.
    """
    (pa, la, ua), (pb, lb, ub) = a, b
    return pa - pb - float(np.hypot(pa - la, ub - pb)), pa - pb + float(np.hypot(ua - pa, pb - lb))
