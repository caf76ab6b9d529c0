"""What the CPU can do, read from the machine, never assumed (precision and sampling defaults follow it).

Why it matters: bf16 runs 1.5-2x faster than fp32 on CPUs with a bf16 unit (AVX512-BF16 or AMX) and is
emulated, 17-374x slower, on CPUs without one (docs/design.md has the figures, their CPUs and commands).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ldm.errors import ConfigError

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
BF16_OVERRIDE = "LDM_CPU_BF16"


def _cpuinfo_field(text: str, name: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name)), "")


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable, e.g. macOS)."""
    try:
        return _cpuinfo_field(cpuinfo.read_text(), "flags").split()
    except OSError:
        return []


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU advertises a bf16 unit (AVX512-BF16 or AMX-BF16).

    `LDM_CPU_BF16=0` (or `1`) overrides what this machine's /proc/cpuinfo says. Why: every choice that
    follows the CPU (bf16 autocast, `16-mixed` training, the OpenVINO engine) then behaves the same on any
    machine; the test suite sets 0, so its results do not depend on the CPU it runs on.
    """
    override = os.environ.get(BF16_OVERRIDE)
    if override is not None and cpuinfo == CPUINFO:
        if override not in ("0", "1"):
            raise ConfigError(f"{BF16_OVERRIDE}={override!r}: expected 0 (no bf16 unit) or 1 (a bf16 unit), or unset")
        return override == "1"
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, for benchmark tables (falls back to the platform's processor string)."""
    try:
        return _cpuinfo_field(cpuinfo.read_text(), "model name") or platform.processor() or "unknown CPU"
    except OSError:
        return platform.processor() or "unknown CPU"
