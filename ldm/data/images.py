"""Image checks and the pixel pipeline (PIL + numpy; torchvision does not install beside this torch)."""

from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

# What a broken or unreadable image file raises when it is opened or decoded.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# The JPEG end-of-image marker: a truncated file lacks it, and PIL's header-only checks cannot tell.
_JPEG_EOI = b"\xff\xd9"
_SOS, _STANDALONE = 0xDA, {0x01, *range(0xD0, 0xD8)}  # start of scan; markers without a length field
# EXIF orientations that swap width and height (transpose, rotate 90, transverse, rotate 270)
_SWAPS_SIDES = {5, 6, 7, 8}


def jpeg_has_end(data: bytes) -> bool:
    """Whether a JPEG's image data reaches its end-of-image marker (bytes after it, a trailer, are allowed).

    The headers are walked segment by segment up to the first scan, so an EXIF thumbnail's own end marker
    is skipped; inside scan data 0xFF is always escaped, so the next FF D9 is the image's end.
    """
    pos = 2  # after the start-of-image marker
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _STANDALONE:
            pos += 2
        elif marker == _SOS:
            return data.find(_JPEG_EOI, pos + 2) != -1
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def is_readable(path: Path) -> bool:
    """Cheap setup-time check: the header parses, `verify()` passes and a JPEG is not cut short.

    Decoding all 8k Flickr images at setup would take minutes; this reads 2 bytes, or for a JPEG that does
    not end with its end marker, parses its headers and searches its bytes.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt != "JPEG":
            return True
        with open(path, "rb") as f:
            f.seek(-2, 2)
            ends_with_eoi = f.read() == _JPEG_EOI  # the common case, read in 2 bytes
        return ends_with_eoi or jpeg_has_end(path.read_bytes())  # a trailer, or cut short
    except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for bad files
        return False


class ImageTransform:
    """RGB image -> (3, R, R) float32 in [-1, 1], as the SD VAE expects.

    EXIF orientation applied first; shorter side to `resolution` (bicubic), then a center crop (or a
    random one when `random_crop`), then an optional horizontal flip. Randomness comes from torch's RNG,
    which Lightning's `seed_everything` and DataLoader workers seed.
    """

    def __init__(self, resolution: int, *, random_crop: bool, random_flip: bool) -> None:
        self.resolution = resolution
        self.random_crop = random_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        r = self.resolution
        swapped = image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPS_SIDES
        w, h = image.size[::-1] if swapped else image.size  # the size as the photo is meant to be seen
        scale = r / min(w, h)
        new_w, new_h = max(r, round(w * scale)), max(r, round(h * scale))
        if image.format == "JPEG":  # let libjpeg decode at 1/2..1/8 scale when that suffices
            image.draft("RGB", (new_h, new_w) if swapped else (new_w, new_h))
        # phones store photos sideways with an EXIF orientation tag; upright them as every viewer does
        image = ImageOps.exif_transpose(image).convert("RGB")
        if image.size != (new_w, new_h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if self.random_crop:
            left = int(torch.randint(new_w - r + 1, ()))
            top = int(torch.randint(new_h - r + 1, ()))
        else:
            left, top = (new_w - r) // 2, (new_h - r) // 2
        image = image.crop((left, top, left + r, top + r))
        if self.random_flip and bool(torch.rand(()) < 0.5):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # (R, R, 3) in [0, 255]
        return pixels.permute(2, 0, 1) / 127.5 - 1.0  # (3, R, R) in [-1, 1]
