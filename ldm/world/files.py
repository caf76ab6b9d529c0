"""Write a folder so that readers see the old one or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder(path: str | os.PathLike, save: Callable[[Path], object]) -> Path:
    """`save(tmp)` into a sibling temp folder, then swap it in place of `path` (which may exist: a re-run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    old = path.with_name(f".{path.name}-old-{os.getpid()}")
    try:
        save(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
