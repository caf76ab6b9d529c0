"""Write a folder so that readers see the old one or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder(path: str | os.PathLike, save: Callable[[Path], object], *, replace: bool) -> Path:
    """`save(tmp)` into a sibling temp folder, then rename it to `path`.

    replace=True swaps out an existing `path` (a stage re-run); replace=False writes a folder that should
    appear once, so when a parallel writer (another DDP rank) got there first its folder is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    old = path.with_name(f".{path.name}-old-{os.getpid()}")
    try:
        save(tmp)
        if replace and path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError:
        if replace or not path.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
