"""The int8 calibration: the U-Net's inputs along its own denoising trajectories, and what keys the entry.

Why the key holds the calibration: an int8 model is only as good as the activations its ranges were
measured on. The prompts, steps, scheduler and guidance of the calibration renders, the number of samples
kept and nncf's version all change the int8 file, so each is in the entry's manifest and in the tag of its
folder name (`ov2026.4.1-f32-int8-c1a2b3c4d-v3`): another calibration is another entry, never a silent
reuse of one made for other settings.

Why a subsample (`engine.calibration.samples`): the recorded inputs themselves are small (a latent, a
timestep and a conditioning per call); what grows with their number is nncf's work, which runs the U-Net
over every sample to gather its statistics. N samples spread evenly over the trajectories keep every part
of the schedule. `benchmarks/int8_build.py` measures what each setting costs.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GUIDANCE_INTERVAL = (0.0, 1.0)  # calibration guides every step: its batch-2 calls see both halves of CFG
SEED = 0


def calibration_fields(engine: Any) -> dict[str, Any]:
    """What the int8 entry is calibrated on, from `engine.*` (conf/sampling/default.yaml), as plain values."""
    import nncf

    c = engine.calibration
    return {
        "prompts": [str(p) for p in engine.calibration_prompts],
        "steps": int(c.steps),
        "scheduler": str(c.scheduler),
        "guidance_scale": float(c.guidance_scale),
        "guidance_interval": list(GUIDANCE_INTERVAL),
        "seed": SEED,
        "samples": None if c.samples is None else int(c.samples),
        "nncf": nncf.__version__,
    }


def calibration_tag(fields: dict[str, Any]) -> str:
    """`c` + 8 hex digits of SHA-256 over `fields`: the part of the int8 folder name that names them."""
    return "c" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def spread(samples: Sequence[Any], count: int | None) -> list[Any]:
    """`count` of `samples`, evenly spaced from the first to the last (all of them for None or more)."""
    if count is None or count >= len(samples):
        return list(samples)
    picks = np.unique(np.linspace(0, len(samples) - 1, count).round().astype(int))
    return [samples[i] for i in picks]


def calibration_samples(
    model: Any, core: Any, folder: Path, properties: dict, fields: dict[str, Any], unet_config: Any, vae_config: Any
) -> list[tuple[np.ndarray, ...]]:
    """The U-Net's inputs along its own denoising trajectories for the calibration prompts, `fields["samples"]`
    of them spread evenly (all for None).

    Rendered with the float engine through `generate` (sample.py's path), so int8 statistics come from the
    latents, timesteps and conditionings the model really sees, not random tensors. The torch U-Net and VAE
    may be gone already (dropped to save memory): their configs come as arguments.
    """
    from ldm.generation.openvino import export
    from ldm.generation.openvino.runtime import CompiledByShape, OpenVINOUNet, OpenVINOVAE
    from ldm.generation.pipeline import generate
    from ldm.generation.settings import SampleSettings

    samples: list[tuple[np.ndarray, ...]] = []
    run = CompiledByShape(core, folder / export.UNET_FILE, properties, "U-Net")
    decode = CompiledByShape(core, folder / export.VAE_FILE, properties, "VAE decoder")

    def record(*arrays: np.ndarray) -> np.ndarray:
        samples.append(tuple(np.array(a, copy=True) for a in arrays))
        return run(*arrays)

    torch_unet, torch_vae = model.unet, model.vae
    model.unet = OpenVINOUNet(record, unet_config, "calibration")  # type: ignore[arg-type]
    model.vae = OpenVINOVAE(decode, vae_config, "calibration")
    try:
        settings = SampleSettings(
            prompts=tuple(fields["prompts"]), negative_prompt="", steps=fields["steps"],
            guidance_scale=fields["guidance_scale"], scheduler=fields["scheduler"], seed=fields["seed"],
            height=None, width=None, num_images=1, batch_size=1, guidance_interval=GUIDANCE_INTERVAL,
        )  # fmt: skip
        generate(model, settings)
    finally:
        model.unet, model.vae = torch_unet, torch_vae
        run.compiled.clear()  # the float engine's compiled copies go before nncf compiles its own
        decode.compiled.clear()
        gc.collect()
    return spread(samples, fields["samples"])
