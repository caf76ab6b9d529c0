"""Keep third-party banners a user can do nothing about out of the console; never our own warnings.

Why here: `ldm/__init__.py` calls `quiet_third_party()` before anything imports transformers, diffusers or
Lightning, so the filters sit on those libraries' loggers before the first message. Each filter matches one
known message by its text, on the one logger that emits it, so every other message of those libraries
(and every warning of ours) still prints:
- Lightning's advertising tips ("💡 Tip: ... litlogger / litmodels") and its "TPU/HPU available" lines;
- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...Pil" (this
  project keeps torchvision out on purpose: docs/design.md, "torchvision");
- Lightning's deprecation of its own `isinstance(treespec, LeafSpec)` call (inside Lightning, under torch 2.13);
- Lightning's "Found N module(s) in eval mode at the start of training": the frozen VAE and U-Net are in eval
  mode by design (docs/design.md, "Frozen means frozen").
"""

from __future__ import annotations

import logging
import warnings

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_LIGHTNING_BANNERS = ("💡 Tip:", "TPU available:", "HPU available:")
_TRANSFORMERS_LOGGER = "transformers.utils.import_utils"
_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"


class _DropMessages(logging.Filter):
    """Drop records whose message starts with (or, with `contains`, includes) one of `texts`."""

    def __init__(self, texts: tuple[str, ...], contains: bool = False) -> None:
        super().__init__()
        self.texts, self.contains = texts, contains

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.contains:
            return not any(text in message for text in self.texts)
        return not message.startswith(self.texts)


def quiet_third_party() -> None:
    """Install the filters above (idempotent: a filter already on a logger is not added twice)."""
    for name, drop in [
        *((n, _DropMessages(_LIGHTNING_BANNERS)) for n in _LIGHTNING_LOGGERS),
        (_TRANSFORMERS_LOGGER, _DropMessages((_TORCHVISION_FALLBACK,), contains=True)),
    ]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(drop)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
