"""What a step costs, for time estimates: relative to one 512x512 U-Net call, measured once per speed.

Why apart from the worker: the rule (pixels, and two U-Net passes for a guided step but one for a step
outside `guidance_interval`) is the whole of the estimate's model; the worker only times steps.
"""

from __future__ import annotations

from ldm.generation.settings import SampleSettings


def step_units(settings: SampleSettings, native: int) -> float:
    """A step's mean work relative to one 512x512 U-Net call: pixels x (1 + the fraction of steps guided)."""
    pixels = (settings.height or native) * (settings.width or native)
    return pixels / 512**2 * (1 + guided_fraction(settings))


def guided_fraction(settings: SampleSettings) -> float:
    """The fraction of steps that run classifier-free guidance: step i of N is guided when
    start ≤ i/N < end (ldm/generation/guidance.py), none when guidance_scale ≤ 1."""
    if settings.guidance_scale <= 1:
        return 0.0
    start, end = settings.guidance_interval
    return sum(start <= i / settings.steps < end for i in range(settings.steps)) / settings.steps
