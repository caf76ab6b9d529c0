"""Adherence: does a generated image show the shape, colour and position its prompt names?

Generation goes through `ldm.generation.pipeline.generate` (the path of sample.py and the app); the judge is the
attribute classifier of `ldm.world.judge`, accepted only after its accuracy check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def chance_levels() -> dict[str, float]:
    """Accuracy of a uniform guess per attribute (the prompt sets are balanced over all combinations)."""
    return {a: 1.0 / len(VALUES[a]) for a in ATTRIBUTES}


def eval_prompts(vocabulary: str, count: int, templates: str, seed: int, batch_size: int) -> list[Prompt]:
    """`count` prompts cycling through all 120 attribute combinations (balanced once count is a multiple).

    templates: `held_out` (sentences never written to the world's caption files) or `train`. Prompt i's
    seed is `seed + i // batch_size`: `generate` gives every prompt of one call the same seed.
    """
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates={templates!r}: expected one of {TEMPLATE_SETS}")
    vocab = VOCABULARIES[vocabulary]
    sentences = vocab.held_out if templates == "held_out" else vocab.templates
    combos = all_combinations()
    # a stride coprime with 120 spreads neighbouring prompts (which share a seed) over all attributes
    order = [combos[(7 * i) % len(combos)] for i in range(count)]
    return [
        Prompt(vocab.caption(attrs, sentences[i % len(sentences)]), vocabulary, attrs, seed + i // batch_size)
        for i, attrs in enumerate(order)
    ]


def render(model: TextEncoderFineTuner, prompts: Sequence[Prompt], plan: SamplingPlan, desc: str) -> list[Image.Image]:
    """One image per prompt, `plan.batch_size` prompts per `generate` call (one seed per call)."""
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
        )
        images += generate(model, settings)
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
