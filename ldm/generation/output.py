"""Images to files: PNGs that carry their settings, grids, and file names made from prompts.

Why the settings go into the PNG: an image found later says how to make it again (same seed and
settings give the same bytes).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

METADATA_KEYS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "scheduler",
    "guidance_scale",
    "height",
    "width",
    "checkpoint",
    "model",
    "precision",
    "deep_cache",
    "guidance_interval",  # only where it is not [0, 1] (every step guided)
    "guidance_rescale",  # only where it is not 0
)


def png_bytes(image: Image.Image) -> bytes:
    """PNG with the settings in text chunks; nothing time-dependent, so same pixels -> same bytes."""
    info = PngInfo()
    for key in METADATA_KEYS:
        if key in image.info:
            info.add_text(key, str(image.info[key]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def slugify(text: str, max_length: int = 60) -> str:
    """File-name-safe form of a prompt: 'A dog, running!' -> 'a-dog-running'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "prompt"


def make_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile images (all one size) in rows of `columns` (default: a near-square grid)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def save_images(images: Sequence[Image.Image], out_dir: str | Path) -> list[Path]:
    """One `<prompt slug>-<seed>.png` per image, plus a `grid-...png` when there are several."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = out / f"{slugify(image.info['prompt'])}-{image.info['seed']}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    if len(images) > 1:
        grid = make_grid(images)
        first = images[0].info
        grid.info.update({key: first[key] for key in METADATA_KEYS if key in first})
        grid.info["prompt"] = "\n".join(dict.fromkeys(image.info["prompt"] for image in images))
        grid.info["seed"] = ",".join(str(image.info["seed"]) for image in images)
        path = out / f"grid-{slugify(first['prompt'])}-{first['seed']}-{len(images)}.png"
        path.write_bytes(png_bytes(grid))
        paths.append(path)
    return paths
