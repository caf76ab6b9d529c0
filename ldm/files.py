"""Write a folder so that readers see the old one or the new one, never half of either, and a failure at
any step (or a kill between two renames) loses neither."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _backups(path: Path) -> list[Path]:
    """Old copies a replacement moved aside (`.NAME-old-PID`), newest first."""
    prefix = f".{path.name}-old-"
    found = [p for p in path.parent.glob(f"{prefix}*") if p.name[len(prefix) :].isdigit() and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def restore_backup(path: Path) -> bool:
    """If a replacement was killed between its two renames, `path` is missing and its old copy sits beside
    it: put that copy back. Returns whether one was restored."""
    if path.exists():
        return False
    for backup in _backups(path):
        try:
            os.replace(backup, path)
            return True
        except OSError:
            continue
    return False


def _swap_in(new: Path, path: Path) -> None:
    """Rename `new` to `path`, moving an existing `path` aside first and deleting it only once `new` is in.

    If the second rename fails (or is interrupted) the old folder is renamed back; if even that fails it
    stays beside `path` as `.NAME-old-PID`, which the next `write_folder` restores.
    """
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}-old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)  # a stale copy of this process's own earlier, finished swap
    os.replace(path, old)  # if this fails, nothing has moved
    try:
        os.replace(new, path)
    except BaseException as error:
        try:
            os.replace(old, path)  # the old folder back where it was
        except OSError:
            error.add_note(f"the old {path.name} is kept whole at {old}; the next write_folder puts it back")
        raise
    shutil.rmtree(old, ignore_errors=True)  # the new one is in place: only now is the old one expendable


def write_folder(path: str | os.PathLike, save: Callable[[Path], object], *, replace: bool) -> Path:
    """`save(tmp)` into a sibling temp folder, then rename it to `path`.

    replace=True swaps out an existing `path` (a stage re-run); replace=False writes a folder that should
    appear once, so when a parallel writer (another DDP rank) got there first its folder is kept. The temp
    folder is only ever a copy of the new data, so removing it on failure loses nothing that was there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        restore_backup(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-new-", dir=path.parent))
    try:
        save(tmp)
        if replace:
            _swap_in(tmp, path)
        else:
            try:
                os.replace(tmp, path)
            except OSError:
                if not path.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
