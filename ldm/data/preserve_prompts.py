"""The prompts whose embeddings a fine-tune must keep (`data.preserve_prompts`): a file, a data folder or a list.

Why three sources: a user names a text file of their own (one prompt per line); the shapes world keeps what
its base vocabulary meant by naming its base-vocabulary Flickr8k folder (the training captions are read,
deduplicated); and Flickr8k runs default to `generic`, a list of everyday captions shipped with the package.
"""

from __future__ import annotations

from pathlib import Path

from ldm.assets import PRESERVE_PROMPTS_DIR
from ldm.data import layouts
from ldm.errors import ConfigError

KEY = "data.preserve_prompts"


def shipped_lists() -> list[str]:
    """Names of the lists in ldm/assets/preserve_prompts (`generic`, ...)."""
    return sorted(p.stem for p in PRESERVE_PROMPTS_DIR.glob("*.txt"))


def resolve_source(source: str) -> Path:
    """The file or folder `source` names: a shipped list's name, or a path."""
    shipped = PRESERVE_PROMPTS_DIR / f"{source}.txt"
    if "/" not in source and shipped.is_file():
        return shipped
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{KEY}={source!r}: expected a text file (one prompt per line), a Flickr8k-layout folder (its "
            f"training captions) or one of the shipped lists {shipped_lists()}; no such file or folder"
        )
    return path


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_training_captions(root: Path) -> list[str]:
    """The distinct training captions of a Flickr8k-layout folder, in a fixed (sorted) order."""
    samples = layouts.load_folder(root, "auto", val_fraction=0.1, seed=0, splits=("train",))["train"]
    return sorted({caption for sample in samples for caption in sample.captions})


def load_preserve_prompts(source: str | list[str]) -> list[str]:
    """The prompts of `source`; an error naming `data.preserve_prompts` when there are none."""
    if isinstance(source, str):
        path = resolve_source(source)
        prompts = read_training_captions(path) if path.is_dir() else read_prompt_file(path)
    else:
        prompts = [str(p).strip() for p in source if str(p).strip()]
    if not prompts:
        raise ConfigError(f"{KEY}={source!r}: expected at least one prompt, found none")
    return prompts
