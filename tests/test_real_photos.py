"""What real photo folders hold and generated ones don't: EXIF orientation, empty caption lines, JPEG trailers.

Each fixture file is written here (a sideways phone photo, a token file with an empty caption, a JPEG with
bytes after its end marker) and read through the DataModule users run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.data import layouts
from ldm.data.datamodule import Flickr8kDataModule
from ldm.data.images import ImageTransform, is_readable
from ldm.data.synthetic import write_captioned_images

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
RED, BLUE = (220, 20, 20), (20, 20, 220)
ROTATE_90_CW = 6  # EXIF Orientation: "the 0th row is the visual right-hand side": viewers turn it 90° clockwise


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)


def datamodule(root: Path, tokenizer: CLIPTokenizer, resolution: int = 32) -> Flickr8kDataModule:
    small = {"root": str(root), "resolution": resolution, "batch_size": 2, "num_workers": 0}
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DATA / "flickr8k.yaml"), small)
    return hydra.utils.instantiate(cfg, tokenizer=tokenizer)


def sideways_photo(path: Path) -> Path:
    """40x20 pixels stored red on top, blue below, tagged 'turn 90° clockwise': seen as 20x40, blue | red."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 40, 10))
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    image.save(path, quality=95, exif=exif)
    return path


def halves(pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """(3, R, R) in [-1, 1] -> the mean RGB of its left, right, top and bottom halves (0..255)."""
    rgb = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.float32)
    r = rgb.shape[0] // 2
    return {
        "left": rgb[:, :r].mean((0, 1)),
        "right": rgb[:, r:].mean((0, 1)),
        "top": rgb[:r].mean((0, 1)),
        "bottom": rgb[r:].mean((0, 1)),
    }


def is_red(rgb: np.ndarray) -> bool:
    return bool(rgb[0] > 150 and rgb[2] < 100)


def is_blue(rgb: np.ndarray) -> bool:
    return bool(rgb[2] > 150 and rgb[0] < 100)


def test_exif_orientation_is_applied(tmp_path: Path, tokenizer) -> None:
    photo = sideways_photo(tmp_path / "photo.jpg")
    with Image.open(photo) as im:
        assert im.size == (40, 20) and im.getexif()[0x0112] == ROTATE_90_CW
        seen = halves(ImageTransform(16, random_crop=False, random_flip=False)(im))
    assert is_blue(seen["left"]) and is_red(seen["right"]), seen  # upright: stored top row is on the right
    # through the DataModule: a sideways photo in a Flickr8k folder is read upright
    root = write_captioned_images(tmp_path / "set", layout="original", num_images=10, image_size=40, seed=0)
    sideways_photo(root / layouts.ORIGINAL_IMAGES / "synthetic_00000.jpg")
    dm = datamodule(root, tokenizer, resolution=16)
    dm.setup("fit")
    assert dm.splits["train"].source.samples[0].image.name == "synthetic_00000.jpg"
    seen = halves(dm.splits["train"][0]["pixel_values"])
    assert is_blue(seen["left"]) and is_red(seen["right"]), seen


@pytest.mark.parametrize("layout", ["original", "kaggle"])
def test_an_empty_caption_line_skips_that_caption_with_one_warning(tmp_path: Path, tokenizer, layout: str) -> None:
    root = write_captioned_images(tmp_path / "set", layout=layout, num_images=10, image_size=40, seed=0)
    name = "synthetic_00003.jpg"
    if layout == "original":
        path = root / layouts.ORIGINAL_TOKENS
        lines = path.read_text().splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}#2\t"))
        lines[index] = f"{name}#2\t   "  # an empty caption
        path.write_text("\n".join(lines) + "\n")
        read = layouts.read_token_file
    else:
        path = root / layouts.KAGGLE_CAPTIONS
        lines = path.read_text().splitlines()
        index = [i for i, line in enumerate(lines) if line.startswith(f"{name},")][2]
        lines[index] = f"{name},"
        path.write_text("\n".join(lines) + "\n")
        read = layouts.read_captions_csv
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        captions = read(path)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and f"skipped 1 empty caption line(s) (line {index + 1})" in messages[0]
    assert str(path) in messages[0]
    assert len(captions[name]) == 4 and all(c.strip() for c in captions[name])
    assert len(captions["synthetic_00004.jpg"]) == 5
    dm = datamodule(root, tokenizer)
    with pytest.warns(UserWarning, match="1 empty caption line"):
        dm.setup("fit")  # the run goes on
    next(iter(dm.train_dataloader()))


def test_a_malformed_line_still_stops_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / layouts.ORIGINAL_TOKENS
    path.write_text("ok.jpg#0\tfine\nok.jpg#1\t\nnot a caption line\n")
    with pytest.raises(ValueError, match=f"{path}:3"):
        layouts.read_token_file(path)


def test_a_jpeg_with_a_trailer_is_kept_and_a_truncated_one_is_not(tmp_path: Path, tokenizer) -> None:
    root = write_captioned_images(tmp_path / "set", layout="original", num_images=10, image_size=40, seed=0)
    images = root / layouts.ORIGINAL_IMAGES
    trailer, cut = images / "synthetic_00000.jpg", images / "synthetic_00001.jpg"
    data = trailer.read_bytes()
    assert data.endswith(b"\xff\xd9")
    trailer.write_bytes(data + b"\x00" * 16 + b"camera maker notes " * 200)  # 3.8 kB after the end marker
    cut.write_bytes(data[: len(data) - 40])  # cut inside the scan data
    with Image.open(trailer) as im:
        im.load()  # PIL decodes the file with a trailer: it is valid
    assert is_readable(trailer) and not is_readable(cut)
    thumbnail_cut = images / "synthetic_00002.jpg"  # an EXIF thumbnail's end marker doesn't count
    thumb = tmp_path / "thumb.jpg"
    Image.new("RGB", (8, 8), RED).save(thumb)
    exif = Image.Exif()
    exif[0x010E] = "photo"
    with Image.open(images / "synthetic_00002.jpg") as im:
        im.save(thumbnail_cut, exif=exif.tobytes() + thumb.read_bytes())
    full = thumbnail_cut.read_bytes()
    assert is_readable(thumbnail_cut)
    thumbnail_cut.write_bytes(full[: len(full) - 40])
    assert not is_readable(thumbnail_cut)

    dm = datamodule(root, tokenizer)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.setup("fit")
    messages = [str(w.message) for w in record if str(w.message).startswith("Flickr8k")]
    assert len(messages) == 1 and "skipped 2 of 8" in messages[0] and "unreadable" in messages[0]
    assert "synthetic_00001.jpg" in messages[0] and "synthetic_00002.jpg" in messages[0]
    assert "synthetic_00000.jpg" not in messages[0]
    kept = [s.image.name for s in dm.splits["train"].source.samples]
    assert kept[0] == "synthetic_00000.jpg"
    assert dm.splits["train"][0]["pixel_values"].shape == (3, 32, 32)
