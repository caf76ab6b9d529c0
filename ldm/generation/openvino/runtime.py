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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ldm.generation.fast import FastSamplingError

log = logging.getLogger(__name__)


class CompiledByShape:
    """An IR file (or an ov.Model) compiled once per input shape up to the batch (CACHE_DIR keeps the blobs).

    Why a path rather than a read ov.Model: a read model keeps its weights memory-mapped (1.7-3.4 GB for
    the SD1.5 U-Net) beside the compiled copy's. The file is read again only when a new shape compiles.
    """

    def __init__(self, core: Any, source: Path | Any, properties: dict[str, Any], name: str) -> None:
        self.core, self.source, self.properties, self.name = core, source, properties, name
        self.compiled: dict[tuple, Any] = {}

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """The first output (the noise prediction, the image)."""
        return self.outputs(*arrays)[0]

    def outputs(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.compile(tuple(a.shape for a in arrays))(list(arrays)).to_tuple()

    def compile(self, shapes: tuple) -> Any:
        """The compiled model for input `shapes` (compiled on first use; a blob from CACHE_DIR after).

        Inputs of rank 3 or more (latents, text states) keep their batch dimension dynamic, so batch 1
        and batch 2 of one size share one compiled copy; the timestep's (1,) stays as it is.
        """
        key = tuple((-1, *shape[1:]) if len(shape) >= 3 else tuple(shape) for shape in shapes)
        if key not in self.compiled:
            start = time.perf_counter()
            on_disk = isinstance(self.source, (str, Path))
            model = self.core.read_model(str(self.source)) if on_disk else self.source.clone()
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
    """`unet(sample, timestep, encoder_hidden_states, ...)` -> noise prediction, from a compiled model.

    `shallow` maps a DeepCache branch to its compiled shallow graph; `deep_cache(interval, branch)` routes
    the calls of one pipeline call through the full and shallow graphs (`ldm.generation.fast` enters it).
    """

    def __init__(
        self, compiled: CompiledByShape, config: Any, precision: str, shallow: dict[int, CompiledByShape] | None = None
    ) -> None:
        super().__init__(config, precision)
        self.run, self.shallow = compiled, shallow or {}
        self.session: EngineDeepCache | None = None

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
        arrays = (
            sample.detach().float().contiguous().numpy(),
            t.numpy(),
            encoder_hidden_states.detach().float().contiguous().numpy(),
        )
        out = self.run(*arrays) if self.session is None else self.session(*arrays)
        noise = torch.from_numpy(np.array(out, copy=True))
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    def deep_cache(self, interval: int, branch: int) -> EngineDeepCache:
        if branch not in self.shallow:
            raise FastSamplingError(f"deep_cache.branch={branch}: this engine was built for {sorted(self.shallow)}")
        return EngineDeepCache(self, interval, branch)


class EngineDeepCache:
    """DeepCache on the engine, for one pipeline call: the torch `fast.DeepCache`'s schedule on two graphs.

    Call i (from 0) is full when i % interval == 0 (or the batch changed, as the guidance interval does):
    the full graph runs and its output 1 + branch, the feature entering the last up block's shallow
    layers, is kept. The calls between run the shallow graph on it.
    """

    def __init__(self, unet: OpenVINOUNet, interval: int, branch: int) -> None:
        self.unet, self.interval, self.branch = unet, interval, branch
        self.full, self.shallow = unet.run, unet.shallow[branch]
        self.calls = 0
        self.kinds: list[str] = []  # "full" | "shallow" per call, for benchmarks
        self._feature: np.ndarray | None = None

    def __enter__(self) -> EngineDeepCache:
        self.unet.session = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.unet.session, self._feature = None, None

    def __call__(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray) -> np.ndarray:
        stale = self._feature is None or self._feature.shape[0] != sample.shape[0]
        full = self.calls % self.interval == 0 or stale
        self.calls += 1
        self.kinds.append("full" if full else "shallow")
        if not full:
            return self.shallow(sample, timestep, context, self._feature)
        outputs = self.full.outputs(sample, timestep, context)
        self._feature = np.array(outputs[1 + self.branch], copy=True)
        return outputs[0]


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
