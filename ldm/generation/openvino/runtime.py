"""Compiled OpenVINO models behind the interface diffusers' StableDiffusionPipeline calls.

Why wrappers and not a separate pipeline: diffusers' loop, schedulers, CFG mix, callbacks (step-end,
guidance interval, progress) and image post-processing stay exactly the torch path's; only `unet(...)`
and `vae.decode(...)` change. Each wrapper compiles one copy of its model per latent size on first use,
static in every dimension but the batch. Why the batch stays dynamic: each compiled copy holds its own
weights (3.4 GB for SD1.5 in f32). With a static batch-2 copy for guided steps beside a batch-1 copy for
unguided ones, a generation with a guidance interval peaked at 17.7 GiB; with one dynamic-batch copy at
12.9 GiB, and its batch-2 calls ran no slower (docs/engine.md, Memory). Compiled blobs land in CACHE_DIR.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

log = logging.getLogger(__name__)


class CompiledByShape:
    """An ov.Model compiled once per input shape up to the batch (OpenVINO's CACHE_DIR keeps the blobs)."""

    def __init__(self, core: Any, model: Any, properties: dict[str, Any], name: str) -> None:
        self.core, self.model, self.properties, self.name = core, model, properties, name
        self.compiled: dict[tuple, Any] = {}

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        return self.compile(tuple(a.shape for a in arrays))(list(arrays))[0]

    def compile(self, shapes: tuple) -> Any:
        """The compiled model for input `shapes` (compiled on first use; a blob from CACHE_DIR after).

        Inputs of rank 3 or more (latents, text states) keep their batch dimension dynamic, so batch 1
        and batch 2 of one size share one compiled copy; the timestep's (1,) stays as it is.
        """
        key = tuple((-1, *shape[1:]) if len(shape) >= 3 else tuple(shape) for shape in shapes)
        if key not in self.compiled:
            start = time.perf_counter()
            model = self.model.clone()
            model.reshape({port: list(shape) for port, shape in zip(model.inputs, key, strict=True)})
            self.compiled[key] = self.core.compile_model(model, "CPU", self.properties)
            log.debug("compiled the OpenVINO %s for %s in %.1f s", self.name, key, time.perf_counter() - start)
        return self.compiled[key]


class EngineModule(torch.nn.Module):
    """No parameters, fp32 in and out on the CPU: what diffusers reads of a component (config, dtype, device)."""

    def __init__(self, config: Any, precision: str) -> None:
        super().__init__()
        self.config = config
        self.engine_precision = precision  # recorded in each image's metadata

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class OpenVINOUNet(EngineModule):
    """`unet(sample, timestep, encoder_hidden_states, ...)` -> noise prediction, from a compiled model."""

    def __init__(self, compiled: CompiledByShape, config: Any, precision: str) -> None:
        super().__init__(config, precision)
        self.run = compiled

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        unsupported = [k for k, v in kwargs.items() if v is not None and k not in ("timestep_cond",)]
        if args or unsupported or kwargs.get("timestep_cond") is not None:
            raise TypeError(f"the OpenVINO U-Net takes sample, timestep, encoder_hidden_states only, not {unsupported}")
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[:1]  # one timestep for the whole batch
        out = self.run(
            sample.detach().float().contiguous().numpy(),
            t.numpy(),
            encoder_hidden_states.detach().float().contiguous().numpy(),
        )
        noise = torch.from_numpy(np.array(out, copy=True))
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)


class OpenVINOVAE(EngineModule):
    """The VAE's `decode(latents)` from a compiled decoder (text-to-image never encodes)."""

    def __init__(self, compiled: CompiledByShape, config: Any, precision: str) -> None:
        super().__init__(config, precision)
        self.run = compiled

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> Any:
        image = torch.from_numpy(np.array(self.run(z.detach().float().contiguous().numpy()), copy=True))
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z, return_dict=False)[0]
