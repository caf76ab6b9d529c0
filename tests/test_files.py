"""`ldm.files.write_folder`: a replacement that fails at any step, or is killed between its renames,
leaves the old folder or the new one, never neither (issue 13, item 9). Each step is made to fail in turn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ldm import files
from ldm.files import write_folder


def saver(content: str):
    def save(tmp: Path) -> None:
        (tmp / "data.txt").write_text(content)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "more.txt").write_text(content * 2)

    return save


def read(path: Path) -> str:
    assert (path / "sub" / "more.txt").read_text() == (path / "data.txt").read_text() * 2  # whole, not half
    return (path / "data.txt").read_text()


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    path = tmp_path / "stage"
    write_folder(path, saver("old"), replace=True)
    assert read(path) == "old" and siblings(path) == []
    return path


def fail_replace_call(monkeypatch, *failing: int, error: type[BaseException] = OSError) -> list[tuple]:
    """Make the n-th `os.replace` call(s) inside ldm.files raise `error`; returns the calls seen."""
    calls: list[tuple] = []
    real = os.replace

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) in failing:
            raise error(f"injected failure of rename #{len(calls)}")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    return calls


def test_a_replacement_swaps_in_the_new_folder_and_leaves_nothing_beside_it(existing: Path) -> None:
    write_folder(existing, saver("new"), replace=True)
    assert read(existing) == "new" and siblings(existing) == []


def test_save_failing_keeps_the_old_folder(existing: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "data.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder(existing, broken, replace=True)
    assert read(existing) == "old" and siblings(existing) == []


def test_moving_the_old_folder_aside_failing_keeps_it(existing: Path, monkeypatch) -> None:
    calls = fail_replace_call(monkeypatch, 1)
    with pytest.raises(OSError, match="rename #1"):
        write_folder(existing, saver("new"), replace=True)
    assert calls[0][0] == "stage"  # the failing step was moving the old folder aside
    assert read(existing) == "old" and siblings(existing) == []


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_the_new_folder_failing_to_move_in_puts_the_old_one_back(existing: Path, monkeypatch, error) -> None:
    calls = fail_replace_call(monkeypatch, 2, error=error)
    with pytest.raises(error):
        write_folder(existing, saver("new"), replace=True)
    assert existing.is_dir() and read(existing) == "old" and siblings(existing) == []
    assert calls[1][1] == "stage" and calls[2] == (calls[0][1], "stage")  # moved in failed; old renamed back


def test_even_the_rollback_failing_keeps_the_old_copy_and_the_next_write_restores_it(
    existing: Path, monkeypatch
) -> None:
    fail_replace_call(monkeypatch, 2, 3)
    with pytest.raises(OSError, match="rename #2") as raised:
        write_folder(existing, saver("new"), replace=True)
    assert "is kept whole at" in raised.value.__notes__[0]
    assert not existing.exists()
    (backup,) = siblings(existing)  # the old folder, whole, beside the path
    assert read(existing.parent / backup) == "old"
    monkeypatch.undo()

    def broken(tmp: Path) -> None:
        raise OSError("this write fails too")

    with pytest.raises(OSError, match="fails too"):
        write_folder(existing, broken, replace=True)
    assert read(existing) == "old" and siblings(existing) == []  # restored before anything else


def test_a_kill_between_the_two_renames_is_recovered(existing: Path, monkeypatch) -> None:
    """SIGKILL runs no handler: simulate it by leaving the disk as the first rename left it."""
    aside = existing.with_name(f".{existing.name}-old-4242")
    os.replace(existing, aside)
    assert files.restore_backup(existing)
    assert read(existing) == "old" and siblings(existing) == []


def test_deleting_the_old_copy_failing_still_leaves_the_new_folder(existing: Path, monkeypatch) -> None:
    real = files.shutil.rmtree

    def rmtree(path, ignore_errors=False):
        if "-old-" in Path(path).name and Path(path).exists():
            if ignore_errors:
                return None
            raise OSError("busy")
        return real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(files.shutil, "rmtree", rmtree)
    write_folder(existing, saver("new"), replace=True)
    assert read(existing) == "new"


def test_write_once_keeps_the_first_writers_folder(existing: Path) -> None:
    write_folder(existing, saver("second"), replace=False)
    assert read(existing) == "old" and siblings(existing) == []
