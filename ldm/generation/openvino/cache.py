"""The engine cache: `<root>/<weights fingerprint>/<key>/`, checked before it is trusted.

Why a fingerprint of the weights and not the model's name: two folders can hold the same base (a copy, a
hub snapshot) and one name can hold other weights (a re-saved base). The key adds what changes the
converted files: the OpenVINO version, the precision and the quantization. The static shapes (batch 1 and
2, the latent size, 77 tokens) key the compiled blobs in `compiled/` (OpenVINO's CACHE_DIR keys a blob by
the model, its shapes and the compile options), so another image size recompiles but never re-exports.
Each entry holds a manifest with the size and SHA-256 of every file; a missing, truncated or altered file
makes the entry stale, and it is rebuilt (and the rebuild is logged).

Why a build lock (`filelock`): two processes that need one missing entry (the app and a sample.py run, two
benchmark variants) would each pay the export (minutes) or the int8 calibration (ten minutes) and the
memory of it, side by side. `filelock` takes the operating system's advisory lock (flock on POSIX), which
the kernel drops when its holder dies, so a killed build never leaves a lock behind; it is already
installed with torch, diffusers and huggingface_hub (which lock their own caches with it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT = 3  # bump when the exported files change meaning (2: dynamic token count; 3: DeepCache feature outputs)


def fingerprint(*modules: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over every parameter and buffer: names, dtypes, shapes and bytes."""
    import torch  # here, not at the top: the cache's checks and its build lock run without torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()[:16]


def entry_key(ov_version: str, precision: str, quantize: str | None, part: str = "") -> str:
    """The folder name below the fingerprint, e.g. `ov2026.4.1-f32-v3`, for int8 with the tag of what it was
    calibrated on `ov2026.4.1-bf16-int8-c1a2b3c4d-v3`, or, for DeepCache's shallow graph of branch 0,
    `ov2026.4.1-f32-shallow0-v3`."""
    version = ov_version.split("-")[0]
    parts = [f"ov{version}", precision, *([quantize] if quantize else []), *([part] if part else []), f"v{FORMAT}"]
    return "-".join(parts)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, files: Iterable[str], info: dict[str, Any]) -> None:
    """Record each file's size and SHA-256 (written last: an entry without a manifest is incomplete)."""
    entries = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in files}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, **info, "files": entries}, indent=1))


def check_entry(folder: Path, expected: dict[str, Any], *, files: bool = True) -> str | None:
    """None when `folder` is a complete, unaltered entry for `expected`; else why it is not (for the log).

    `files=False` checks the manifest alone (a cheap "is it built?", for `engine.backend=auto`'s candidates);
    whatever is loaded is checked in full first.
    """
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    for key, value in {"format": FORMAT, **expected}.items():
        if manifest.get(key) != value:
            return f"{key} is {manifest.get(key)!r}, expected {value!r}"
    if not files:
        return None
    for name, meta in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            return f"{name} is missing or truncated"
        if file_sha256(path) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def lock_path(folder: Path) -> Path:
    """The lock file of an entry's build, beside it (`.<key>.lock`): never inside the folder it guards."""
    return folder.with_name(f".{folder.name}.lock")


def ensure_entry(folder: Path, expected: dict[str, Any], build: Any, what: str) -> tuple[Path, float | None]:
    """`folder` checked (hit) or built by `build(tmp)` and written atomically; returns it and the build time.

    `build(tmp)` writes the entry's files into `tmp` and returns their names; the manifest is written last.
    Builds hold the entry's lock: a second process that needs the same entry waits (and says so), then
    finds the first one's entry complete and uses it; if that build failed, it builds the entry itself.
    """
    import sys

    from filelock import FileLock, Timeout

    why = check_entry(folder, expected)
    if why is None:
        log.debug("OpenVINO engine cache hit: %s", folder)
        return folder, None
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(folder))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"waiting for another process that is building the OpenVINO {what} into {folder} "
            f"(it holds {lock.lock_file}) ...",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    try:
        why = check_entry(folder, expected)  # the process this one waited for may have built it
        if why is None:
            print(f"using the OpenVINO {what} that another process built into {folder}", file=sys.stderr, flush=True)
            return folder, None
        return folder, _build_entry(folder, expected, build, what, why)
    finally:
        lock.release()


def _build_entry(folder: Path, expected: dict[str, Any], build: Any, what: str, why: str) -> float:
    """Build `folder` (under its lock) and return the seconds it took."""
    import sys
    import time

    from ldm.files import write_folder

    if why != "missing":
        log.warning("OpenVINO engine cache entry %s is stale (%s): rebuilding it", folder, why)
    print(f"building the OpenVINO {what} (once per base model) into {folder} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()

    def save(tmp: Path) -> None:
        write_manifest(tmp, build(tmp), expected)

    write_folder(folder, save, replace=True)
    seconds = time.perf_counter() - start
    print(f"built the OpenVINO {what} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds
