"""The samplers by name, each built from the base model's own scheduler config.

Why a registry: users name a sampler (`scheduler=euler_a`), and every sampler must inherit the base's
betas, timestep offsets and prediction type, with the few overrides SD needs in one place.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ldm.errors import SamplingError, require

# name -> (class, config overrides). DDIM's own default clip_sample=True clamps the predicted clean latents
# to [-1, 1]; SD-style latents are not in that range, and every image came out a blob (docs/design.md),
# so it is forced off as SD1.5's own scheduler config has it. dpm++_karras and unipc are the few-step solvers
# A1111 and ComfyUI users pick for 8-10 steps (their adherence at those counts: docs/performance.md).
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "dpm++": (DPMSolverMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "dpm++_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
}


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A sampler by name, built from the base model's scheduler config (betas, offsets, prediction type)."""
    require(name in SCHEDULERS, f"scheduler={name!r}: expected one of {', '.join(SCHEDULERS)}", SamplingError)
    cls, overrides = SCHEDULERS[name]
    # Karras sigmas start at the schedule's largest sigma, which zero-terminal SNR makes infinite: the
    # images come out as noise (measured on the shapes world, whose base has that schedule)
    require(
        not (overrides.get("use_karras_sigmas") and dict(base_config).get("rescale_betas_zero_snr")),
        f"scheduler={name!r}: Karras sigmas need a finite largest sigma, and this base's schedule is zero-terminal "
        "SNR (rescale_betas_zero_snr: true); expected dpm++ or unipc for few steps",
        SamplingError,
    )
    return cls.from_config(dict(base_config), **overrides)
