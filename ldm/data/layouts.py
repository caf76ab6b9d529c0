"""Read the two Flickr8k folder layouts into per-split lists of (image path, captions).

original: Flicker8k_Dataset/ + Flickr8k.token.txt + Flickr_8k.{train,dev,test}Images.txt (the 2013 release)
kaggle:   Images/ + captions.txt (CSV `image,caption`), no split files: split here, by image.
"""

import csv
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ldm.data.images import is_readable

SPLITS = ("train", "val", "test")

ORIGINAL_IMAGES = "Flicker8k_Dataset"  # sic: the original archive misspells it
ORIGINAL_TOKENS = "Flickr8k.token.txt"
ORIGINAL_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
KAGGLE_IMAGES = "Images"
KAGGLE_CAPTIONS = "captions.txt"

EXPECTED = (
    f"original: {ORIGINAL_IMAGES}/, {ORIGINAL_TOKENS}, {', '.join(ORIGINAL_SPLIT_FILES.values())}; "
    f"or kaggle: {KAGGLE_IMAGES}/, {KAGGLE_CAPTIONS}"
)


@dataclass(frozen=True)
class Sample:
    image: Path
    captions: tuple[str, ...]


def find_layout(root: Path) -> str | None:
    """'original' or 'kaggle' from the files in `root`; None when it holds neither."""
    if (root / ORIGINAL_TOKENS).exists() or (root / ORIGINAL_IMAGES).is_dir():
        return "original"
    if (root / KAGGLE_CAPTIONS).exists() or (root / KAGGLE_IMAGES).is_dir():
        return "kaggle"
    return None


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise FileNotFoundError(f"Flickr8k root {root} does not exist; expected {EXPECTED}")
    layout = find_layout(root)
    if layout is None:
        raise FileNotFoundError(f"Flickr8k root {root} holds neither layout; expected {EXPECTED}")
    return layout


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: expected {what}")
    return path


def warn_empty_captions(path: Path, linenos: list[int]) -> None:
    """One warning for all empty caption lines of a file: each costs its image one caption, not the run."""
    if linenos:
        shown = ", ".join(map(str, linenos[:5])) + (", ..." if len(linenos) > 5 else "")
        warnings.warn(
            f"Flickr8k captions {path}: skipped {len(linenos)} empty caption line(s) (line {shown}); "
            "their images keep their other captions",
            stacklevel=3,
        )


def read_token_file(path: Path) -> dict[str, list[str]]:
    """`name.jpg#N<TAB>caption` lines -> {name: [captions in N order]}; an empty caption is skipped and counted."""
    captions: dict[str, dict[int, str]] = {}
    empty: list[int] = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, tab, caption = line.partition("\t")
            name, hash_, n = key.strip().rpartition("#")
            if hash_ and name and n.isdigit() and not caption.strip():
                empty.append(lineno)  # `name.jpg#N` with nothing (or only spaces) after it
                continue
            if not tab or not hash_ or not name or not n.isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'image.jpg#N<TAB>caption', got {line!r}")
            captions.setdefault(name, {})[int(n)] = caption.strip()
    warn_empty_captions(path, empty)
    return {name: [c for _, c in sorted(by_n.items())] for name, by_n in captions.items()}


def read_split_file(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [line.strip() for line in f if line.strip()]


def read_captions_csv(path: Path) -> dict[str, list[str]]:
    """Kaggle `image,caption` CSV -> {name: [captions in file order]}. Captions may hold quoted commas;
    an empty one (`name.jpg,`) is skipped and counted."""
    captions: dict[str, list[str]] = {}
    empty: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if [h.strip() for h in header or []] != ["image", "caption"]:
            raise ValueError(f"{path}:1: expected the header 'image,caption', got {header!r}")
        for row in reader:
            if not row:
                continue
            if len(row) == 2 and row[0].strip() and not row[1].strip():
                empty.append(reader.line_num)
                continue
            if len(row) != 2 or not row[0].strip():
                raise ValueError(f"{path}:{reader.line_num}: expected 2 fields 'image,caption', got {row!r}")
            captions.setdefault(row[0].strip(), []).append(row[1].strip())
    warn_empty_captions(path, empty)
    return captions


def split_by_image(names: Iterable[str], *, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic split by image (never by caption, so no image sits on both sides).

    val and test get the same share; sorting first makes the result independent of file order.
    """
    names = sorted(set(names))
    random.Random(seed).shuffle(names)
    n_val = round(val_fraction * len(names))
    if val_fraction > 0:
        n_val = max(1, n_val)
    if 2 * n_val >= len(names):
        raise ValueError(f"val_fraction={val_fraction} leaves no training images out of {len(names)}")
    return {
        "val": sorted(names[:n_val]),
        "test": sorted(names[n_val : 2 * n_val]),
        "train": sorted(names[2 * n_val :]),
    }


def read_original(root: Path) -> tuple[Path, dict[str, list[str]], dict[str, list[str]]]:
    """-> (image dir, {name: captions}, {split: names})."""
    what = f"the original Flickr8k layout ({EXPECTED.split('; ')[0]})"
    images = _require(root / ORIGINAL_IMAGES, what)
    captions = read_token_file(_require(root / ORIGINAL_TOKENS, what))
    splits = {s: read_split_file(_require(root / f, what)) for s, f in ORIGINAL_SPLIT_FILES.items()}
    return images, captions, splits


def read_kaggle(root: Path, *, val_fraction: float, seed: int) -> tuple[Path, dict, dict]:
    """-> (image dir, {name: captions}, {split: names})."""
    what = f"the Kaggle Flickr8k layout ({KAGGLE_IMAGES}/, {KAGGLE_CAPTIONS})"
    images = _require(root / KAGGLE_IMAGES, what)
    captions = read_captions_csv(_require(root / KAGGLE_CAPTIONS, what))
    return images, captions, split_by_image(captions, val_fraction=val_fraction, seed=seed)


def build_samples(split: str, names: list[str], images: Path, captions: dict[str, list[str]]) -> list[Sample]:
    """Samples whose image exists, is readable and has captions; ONE warning counts the rest.

    The real token file lists a bogus `2258277193_586949ec62.jpg.1`, and downloads get cut short:
    skipping them here keeps a bad file from killing an epoch hours in.
    """
    samples, skipped = [], {"missing": [], "unreadable": [], "uncaptioned": []}
    for name in names:
        path = images / name
        if not path.is_file():
            skipped["missing"].append(name)
        elif not captions.get(name):
            skipped["uncaptioned"].append(name)
        elif not is_readable(path):
            skipped["unreadable"].append(name)
        else:
            samples.append(Sample(path, tuple(captions[name])))
    n_skipped = sum(map(len, skipped.values()))
    if n_skipped:
        detail = "; ".join(
            f"{len(v)} {k} (e.g. {', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in skipped.items() if v
        )
        warnings.warn(
            f"Flickr8k {split}: skipped {n_skipped} of {len(names)} images in {images}: {detail}",
            stacklevel=2,
        )
    return samples


def load_folder(
    root: Path, layout: str, *, val_fraction: float, seed: int, splits: Iterable[str] = SPLITS
) -> dict[str, list[Sample]]:
    """{split: samples} for a folder layout ('auto' detects it)."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise FileNotFoundError(f"Flickr8k root {root} does not exist; expected {EXPECTED}")
    if layout == "original":
        images, captions, names = read_original(root)
    elif layout == "kaggle":
        images, captions, names = read_kaggle(root, val_fraction=val_fraction, seed=seed)
    else:
        raise ValueError(f"unknown folder layout {layout!r}: expected auto, original or kaggle")
    return {s: build_samples(s, names[s], images, captions) for s in splits}
