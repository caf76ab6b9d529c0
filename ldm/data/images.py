"""Image checks and the pixel pipeline (PIL + numpy; torchvision does not install beside this torch)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# What a broken or unreadable image file raises when it is opened or decoded.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# The JPEG end-of-image marker: a truncated file lacks it, and PIL's header-only checks cannot tell.
_JPEG_EOI = b"\xff\xd9"


def is_readable(path: Path) -> bool:
    """Cheap setup-time check: the header parses, `verify()` passes and a JPEG is not cut short.

    Decoding all 8k Flickr images at setup would take minutes; this reads headers and the file tail only.
    """
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 1024))
                return _JPEG_EOI in f.read()
        return True
    except Exception:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) for bad files
        return False


class ImageTransform:
    """RGB image -> (3, R, R) float32 in [-1, 1], as the SD VAE expects.

    Shorter side to `resolution` (bicubic), then a center crop (or a random one when `random_crop`),
    then an optional horizontal flip. Randomness comes from torch's RNG, which Lightning's
    `seed_everything` and DataLoader workers seed.
    """

    def __init__(self, resolution: int, *, random_crop: bool, random_flip: bool) -> None:
        self.resolution = resolution
        self.random_crop = random_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        r = self.resolution
        w, h = image.size
        scale = r / min(w, h)
        new_w, new_h = max(r, round(w * scale)), max(r, round(h * scale))
        if image.format == "JPEG":
            image.draft("RGB", (new_w, new_h))  # let libjpeg decode at 1/2..1/8 scale when that suffices
        image = image.convert("RGB")
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
