"""A generated Flickr8k stand-in: coloured shapes at named positions, 5 captions each, on disk.

It lets training, sampling and tests run offline in the real layouts, and its captions carry
exactly what a model should learn (shape, colour, size, position).
"""

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

from ldm.data import layouts

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# name -> (centre x, centre y) as fractions of the image, and the phrases that describe it
POSITIONS = {
    "left": ((0.25, 0.5), "on the left", "near the left edge"),
    "right": ((0.75, 0.5), "on the right", "near the right edge"),
    "top": ((0.5, 0.25), "at the top", "near the top edge"),
    "bottom": ((0.5, 0.75), "at the bottom", "near the bottom edge"),
    "center": ((0.5, 0.5), "in the center", "in the middle"),
}
SIZES = {"small": 0.12, "large": 0.2}  # radius as a fraction of the image side
_SUPERSAMPLE = 4  # draw large, then downsample: antialiased edges without extra dependencies


def draw_shape(shape: str, colour: tuple, centre: tuple, radius: float, background: tuple, size: int) -> Image.Image:
    """One shape on a plain background, drawn 4x large and downsampled (antialiased edges)."""
    s = size * _SUPERSAMPLE
    image = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(image)
    cx, cy, r = centre[0] * s, centre[1] * s, radius * s
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _captions(shape: str, colour: str, position: str, size: str) -> list[str]:
    _, on, near = POSITIONS[position]
    return [
        f"a {colour} {shape} {on}",
        f"a {size} {colour} {shape} {near}",
        f"a {colour} {shape} on a dark background, {on}",
        f"{on}, a {size} {colour} {shape}".capitalize(),
        f"a drawing of a {colour} {shape} {near}",
    ]


def _scenes(num_images: int, seed: int) -> list[tuple[str, tuple, list[str]]]:
    """-> [(file name, `draw_shape` arguments, captions)], drawn from one seeded RNG."""
    rng = random.Random(seed)
    scenes = []
    for i in range(num_images):
        shape, colour, position, size = (
            rng.choice(SHAPES),
            rng.choice(list(COLOURS)),
            rng.choice(list(POSITIONS)),
            rng.choice(list(SIZES)),
        )
        background = tuple(rng.randrange(0, 48) for _ in range(3))
        drawing = (shape, COLOURS[colour], POSITIONS[position][0], SIZES[size], background)
        scenes.append((f"synthetic_{i:05d}.jpg", drawing, _captions(shape, colour, position, size)))
    return scenes


def write_captioned_images(root: str | Path, *, layout: str, num_images: int, image_size: int, seed: int) -> Path:
    """Write `num_images` generated scenes at `root` in the 'original' or 'kaggle' layout; returns root.

    Deterministic: the same arguments give byte-identical files. The original layout gets ~80/10/10
    split files (at least one image each in val and test).
    """
    if layout not in ("original", "kaggle"):
        raise ValueError(f"write_captioned_images: layout must be 'original' or 'kaggle', got {layout!r}")
    if num_images < 3:
        raise ValueError(f"write_captioned_images: need num_images >= 3 (train, val, test), got {num_images}")
    root = Path(root)
    image_dir = root / (layouts.ORIGINAL_IMAGES if layout == "original" else layouts.KAGGLE_IMAGES)
    image_dir.mkdir(parents=True, exist_ok=True)
    scenes = _scenes(num_images, seed)
    for name, drawing, _ in scenes:
        draw_shape(*drawing, image_size).save(image_dir / name, format="JPEG", quality=95)

    if layout == "kaggle":
        with open(root / layouts.KAGGLE_CAPTIONS, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows((name, caption) for name, _, captions in scenes for caption in captions)
        return root

    lines = [f"{name}#{k}\t{caption}\n" for name, _, captions in scenes for k, caption in enumerate(captions)]
    (root / layouts.ORIGINAL_TOKENS).write_text("".join(lines), encoding="utf-8")
    n_val = max(1, round(0.1 * num_images))
    names = [name for name, _, _ in scenes]
    parts = {"train": names[: -2 * n_val], "val": names[-2 * n_val : -n_val], "test": names[-n_val:]}
    for split, file in layouts.ORIGINAL_SPLIT_FILES.items():
        (root / file).write_text("".join(f"{n}\n" for n in parts[split]), encoding="utf-8")
    return root
