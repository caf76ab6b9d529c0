"""What the CPU can do, read from the machine, never assumed (precision and sampling defaults follow it).

Why it matters: bf16 runs 1.5-2x faster than fp32 on CPUs with a bf16 unit (AVX512-BF16 or AMX) and is
emulated, 17-374x slower, on CPUs without one (docs/design.md has the figures, their CPUs and commands).
"""

from __future__ import annotations

import platform
from pathlib import Path

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(text: str, name: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name)), "")


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable, e.g. macOS)."""
    try:
        return _cpuinfo_field(cpuinfo.read_text(), "flags").split()
    except OSError:
        return []


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU advertises a bf16 unit (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, for benchmark tables (falls back to the platform's processor string)."""
    try:
        return _cpuinfo_field(cpuinfo.read_text(), "model name") or platform.processor() or "unknown CPU"
    except OSError:
        return platform.processor() or "unknown CPU"
