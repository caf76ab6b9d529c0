"""Write the shapes world to disk in Flickr8k layout, once per vocabulary, so the Flickr8k DataModule loads it.

Layout under `root`:
    images/              the renders (JPEG), shared by every vocabulary
    base/ new/ mix/      one Flickr8k folder each (original layout: Flicker8k_Dataset -> ../images, token
                         and split files; kaggle layout: Images -> ../images, captions.txt)
    world.json           the arguments that made it (a different request rewrites the world)

`mix` gives each image `mix_new_captions` captions in the new vocabulary and the rest in the base one:
the DataModule reads a random caption of an image each time, so this is the stage-3 mixing ratio.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ldm.data import layouts
from ldm.files import write_folder
from ldm.world.scenes import Scene, sample_scenes
from ldm.world.vocab import BASE, NEW

VOCABULARY_ROOTS = ("base", "new", "mix")
MARKER = "world.json"
VERSION = 2  # bumped when the same arguments would write a different world (2: captions from 12 templates)


def scene_captions(scene: Scene, vocabulary: str, mix_new_captions: int, rng: random.Random) -> list[str]:
    """Five captions of `scene` in `vocabulary` (base | new | mix), their templates drawn with `rng`."""
    attrs = scene.attributes
    if vocabulary == "base":
        return BASE.captions(attrs, rng)
    if vocabulary == "new":
        return NEW.captions(attrs, rng)
    new, base = NEW.captions(attrs, rng), BASE.captions(attrs, rng)
    return new[:mix_new_captions] + base[mix_new_captions:]


def _split_names(names: list[str], val_images: int, test_images: int) -> dict[str, list[str]]:
    """The last images are test, the ones before them val: test scenes are drawn balanced (see write_world)."""
    n_train = len(names) - val_images - test_images
    return {
        "train": names[:n_train],
        "val": names[n_train : n_train + val_images],
        "test": names[n_train + val_images :],
    }


def _write_captions(folder: Path, layout: str, captions: dict[str, list[str]], splits: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True)
    image_dir = layouts.ORIGINAL_IMAGES if layout == "original" else layouts.KAGGLE_IMAGES
    os.symlink(Path("..") / "images", folder / image_dir, target_is_directory=True)
    if layout == "kaggle":  # no split files in this layout: the DataModule splits by image itself
        with open(folder / layouts.KAGGLE_CAPTIONS, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows((name, c) for name, caps in captions.items() for c in caps)
        return
    lines = [f"{name}#{k}\t{c}\n" for name, caps in captions.items() for k, c in enumerate(caps)]
    (folder / layouts.ORIGINAL_TOKENS).write_text("".join(lines), encoding="utf-8")
    for split, file in layouts.ORIGINAL_SPLIT_FILES.items():
        (folder / file).write_text("".join(f"{n}\n" for n in splits[split]), encoding="utf-8")


def write_world(
    root: str | Path,
    *,
    num_images: int,
    image_size: int,
    seed: int,
    layout: str,
    radius: float,
    jitter: float,
    val_images: int,
    test_images: int,
    mix_new_captions: int,
) -> Path:
    """Render `num_images` scenes and write every vocabulary folder; deterministic for equal arguments.

    Train and val scenes have random attributes; the last `test_images` scenes cycle through all 120
    combinations, so the test split covers every shape, colour and position equally.
    """
    if layout not in ("original", "kaggle"):
        raise ValueError(f"world layout must be 'original' or 'kaggle', got {layout!r}")
    if not 0 <= mix_new_captions <= 5:
        raise ValueError(f"mix_new_captions={mix_new_captions}: expected 0..5 (of an image's 5 captions)")
    n_train = num_images - val_images - test_images
    if n_train < 1 or val_images < 1 or test_images < 1:
        raise ValueError(
            f"world: {num_images} images leave no train/val/test split ({val_images} val, {test_images} test)"
        )
    args: dict[str, Any] = dict(
        num_images=num_images, image_size=image_size, seed=seed, layout=layout, radius=radius, jitter=jitter,
        val_images=val_images, test_images=test_images, mix_new_captions=mix_new_captions, version=VERSION,
    )  # fmt: skip
    scenes = sample_scenes(n_train + val_images, seed, radius=radius, jitter=jitter)
    scenes += sample_scenes(test_images, seed + 1, radius=radius, jitter=jitter, balanced=True)
    names = [f"shapes_{i:05d}.jpg" for i in range(num_images)]
    splits = _split_names(names, val_images, test_images)

    def save(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for name, scene in tqdm(zip(names, scenes, strict=True), total=len(names), desc="world", unit="img"):
            # 4:4:4 chroma: the default 4:2:0 smears a 32 px shape's colour into the background
            scene.render(image_size).save(tmp / "images" / name, format="JPEG", quality=95, subsampling=0)
        for vocabulary in VOCABULARY_ROOTS:
            captions = {
                n: scene_captions(s, vocabulary, mix_new_captions, random.Random(f"{seed}:{n}"))
                for n, s in zip(names, scenes, strict=True)
            }
            _write_captions(tmp / vocabulary, layout, captions, splits)
        (tmp / MARKER).write_text(json.dumps(args, indent=2) + "\n")

    return write_folder(root, save, replace=True)


def ensure_world(root: str | Path, **kwargs: Any) -> Path:
    """`write_world` unless `root` already holds a world made with the same arguments."""
    root = Path(root)
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == {**kwargs, "version": VERSION}:
        return root
    return write_world(root, **kwargs)
