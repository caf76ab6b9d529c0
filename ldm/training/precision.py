"""Pick a training precision that actually runs fast on the machine at hand.

Why: Lightning silently turns `16-mixed` on a CPU into `bf16-mixed`, and on a CPU without a bf16 unit
(no AVX512-BF16, no AMX) bf16 is emulated and ran 17-374x slower than fp32 (docs/design.md). So the GPU default
`16-mixed` resolves to `32-true` on such a CPU, with one warning that says why. Only the *string* is
resolved: an explicit `MixedPrecision("16-mixed", "cpu")` plugin still runs fp16 AMP on a CPU (tests do, to
run the GPU path), and the module casts its frozen parts by the plugin in use, never by the device.
"""

from __future__ import annotations

import warnings

import torch

from ldm.hardware import cpu_has_native_bf16


def will_run_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting ends up on the CPU on this machine."""
    if accelerator == "cpu":
        return True
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return False


def resolve_precision(precision: str | int, accelerator: str, native_bf16: bool | None = None) -> str:
    """Return the precision to hand to `Trainer`: `16-mixed` on CPU becomes bf16 or fp32, others stay.

    An explicit other choice (`32-true`, `bf16-mixed`, ...) is respected as given.
    """
    precision = str(precision)
    if precision not in ("16-mixed", "16") or not will_run_on_cpu(accelerator):
        return precision
    native_bf16 = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native_bf16:
        resolved, why = "bf16-mixed", "this CPU has a native bf16 unit"
    else:
        resolved, why = "32-true", "this CPU has no bf16 unit (AVX512-BF16/AMX), where bf16 runs 17-374x slower"
    warnings.warn(
        f"trainer.precision={precision} is the GPU default (on a CPU Lightning would run it as bf16-mixed); "
        f"using precision={resolved!r} because {why}. Set trainer.precision explicitly to override.",
        stacklevel=2,
    )
    return resolved


def frozen_weight_dtype(precision: str) -> torch.dtype:
    """dtype for the frozen VAE/U-Net under a Lightning precision string (trainable weights stay fp32)."""
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("bf16"):
        return torch.bfloat16
    return torch.float32
