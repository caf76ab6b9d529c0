"""Scenes of the shapes world: one shape, a colour, a named position, drawn deterministically from a seed.

Why jitter: exact positions and sizes would let a model (and the judge) memorise 120 images; a little
random offset, size and tint makes every render distinct while the named attributes stay unambiguous.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from PIL import Image

from ldm.data.synthetic import COLOURS, POSITIONS, draw_shape
from ldm.world.vocab import ATTRIBUTES, VALUES


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    centre: tuple[float, float]  # fractions of the image side
    radius: float  # fraction of the image side
    rgb: tuple[int, int, int]
    background: tuple[int, int, int]

    @property
    def attributes(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def render(self, size: int) -> Image.Image:
        return draw_shape(self.shape, self.rgb, self.centre, self.radius, self.background, size)


def all_combinations() -> list[dict[str, str]]:
    """Every (shape, colour, position): 4 x 6 x 5 = 120, in a fixed order."""
    return [dict(zip(ATTRIBUTES, combo, strict=True)) for combo in itertools.product(*VALUES.values())]


def make_scene(attrs: dict[str, str], rng: random.Random, radius: float, jitter: float) -> Scene:
    """Place `attrs` with a random offset of up to `jitter`, a radius within ±15%, a tint and a dark background."""
    cx, cy = POSITIONS[attrs["position"]][0]
    centre = (cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter))
    rgb = tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in COLOURS[attrs["colour"]])
    background = tuple(rng.randrange(0, 48) for _ in range(3))
    return Scene(
        attrs["shape"], attrs["colour"], attrs["position"], centre, radius * rng.uniform(0.85, 1.15), rgb, background
    )


def sample_scenes(count: int, seed: int, *, radius: float, jitter: float, balanced: bool = False) -> list[Scene]:
    """`count` scenes from one seeded RNG: random attributes, or (`balanced`) cycling over all 120 combinations."""
    rng = random.Random(seed)
    combos = all_combinations()
    scenes = []
    for i in range(count):
        attrs = combos[i % len(combos)] if balanced else {a: rng.choice(VALUES[a]) for a in ATTRIBUTES}
        scenes.append(make_scene(attrs, rng, radius, jitter))
    return scenes
