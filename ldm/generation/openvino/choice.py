"""`engine.backend=auto`'s choice: a few timed U-Net calls per candidate, cached per machine and model.

Why measure rather than follow a rule: which runtime is fastest depends on the CPU in ways its flags do
not tell. Two CPUs without a bf16 unit disagreed on whether OpenVINO f32 beats torch, and int8 gained
nothing without VNNI and much with it (docs/engine.md): a rule drawn on one CPU left the other's
speed unused. So the first run times each candidate that is built, at the shape it will render, and keeps
the fastest.

Why a cache of the choice: the measurement costs a few U-Net calls per candidate; later runs read the
choice instead. It is keyed by everything that changes the answer (the CPU model, the base's fingerprint,
the OpenVINO and torch versions, the thread count, the latent shape and precision, the candidates), so a
new OpenVINO or another CPU under a shared cache measures again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.hardware import cpu_name

FILE = "auto_choice.json"
WARMUP, REPEATS = 1, 2  # per candidate: one untimed call (allocation, first-touch), the median of two
STALE_FIELDS = ("openvino", "torch", "cpu")  # a stored choice differing only in these was made for another setup
KEEP = 64  # entries kept in the file (newest first): bases, shapes and thread counts of one machine


def choice_key(
    fingerprint: str, openvino: str, torch: str, threads: int, shape: list[int], precision: str, candidates: list[str]
) -> dict[str, Any]:
    """What a cached choice is valid for (the CPU model read from this machine)."""
    return {"cpu": cpu_name(), "fingerprint": fingerprint, "openvino": openvino, "torch": torch, "threads": threads,
            "shape": list(shape), "precision": precision, "candidates": list(candidates)}  # fmt: skip


def time_call(name: str, call: Callable[[], Any]) -> float:
    """Median seconds of `call()` over REPEATS calls after WARMUP untimed ones (`name`: for the log, tests)."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return []  # none yet, or unreadable: measuring again is the cure
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("key"), dict)]


def read_choice(path: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The cached entry for `key`, or None and why not (for the log line)."""
    entries = _entries(path)
    for entry in entries:
        if entry["key"] == key:
            return entry, "cached"
    for entry in entries:
        differ = [k for k in key if entry["key"].get(k) != key[k]]
        if differ and set(differ) <= set(STALE_FIELDS):
            was = ", ".join(f"{k} was {entry['key'].get(k)!r}" for k in differ)
            return None, f"the cached choice is stale ({was})"
    return None, "no cached choice"


def write_choice(path: Path, key: dict[str, Any], choice: str, seconds: dict[str, float], notes: list[str]) -> None:
    """Record `choice` for `key` (replacing an older one for the same key), atomically, under a lock."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"key": key, "choice": choice, "seconds_per_call": seconds, "notes": notes,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    with FileLock(path.with_name(f".{path.name}.lock")):
        entries = [entry, *(e for e in _entries(path) if e["key"] != key)][:KEEP]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"entries": entries}, indent=1) + "\n")
        os.replace(tmp, path)


def describe(choice: str, seconds: dict[str, float], shape: list[int], threads: int, notes: list[str]) -> str:
    """The one log line: what was chosen, each candidate's measured seconds per call, and what was left out."""
    timed = ", ".join(f"{name} {s:.3g} s" for name, s in sorted(seconds.items(), key=lambda item: item[1]))
    latent = "x".join(str(n) for n in shape)
    line = f"{choice}, the fastest U-Net call on this CPU ({latent} latents, {threads} threads): {timed}"
    return line + "".join(f"; {note}" for note in notes)
