"""Faster CPU sampling without extra weights: bf16 autocast where the CPU has a bf16 unit, and DeepCache.

Why these two: a CFG U-Net call already runs near the machine's matmul roof in fp32 (docs/design.md), so speed
comes from cheaper arithmetic or less work. bf16 matmuls run about 2.5x faster than fp32 on CPUs with
AVX512-BF16/AMX (and 17-374x slower on CPUs without, so `auto` picks fp32 there). DeepCache (Ma et al.,
2023) is training-free: the deep U-Net features change little between neighbouring steps, so a full call
every `interval` calls keeps the feature entering the last up block's shallow layers, and the calls in
between run only the shallow layers at full resolution and reuse it. `interval=1` runs every call in full,
so the images are the plain path's.

The options are installed on a model by `ldm.generation.loading.load_for_inference` (sample.py and the app) and
applied around each pipeline call by `ldm.generation.pipeline.generate`; a model without them samples the plain way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ldm.errors import UserError
from ldm.hardware import cpu_has_native_bf16

DTYPES = ("auto", "fp32", "bf16")
_ATTRIBUTE = "_ldm_fast_sampling"


class FastSamplingError(UserError):
    """A `dtype` / `deep_cache` setting that can't work; the message names the key."""


@dataclass(frozen=True)
class FastSampling:
    """Resolved options: `autocast_bf16` (CPU only) and DeepCache's `interval` (1 = off) and `branch`."""

    autocast_bf16: bool
    interval: int
    branch: int

    @classmethod
    def from_config(cls, dtype: str, deep_cache: Any, device: torch.device) -> FastSampling:
        """From conf/sampling: `dtype` (auto | fp32 | bf16) and `deep_cache: {interval, branch}`."""
        check_config(dtype, deep_cache)
        autocast = device.type == "cpu" and (dtype == "bf16" or (dtype == "auto" and cpu_has_native_bf16()))
        if autocast and dtype == "bf16" and not cpu_has_native_bf16():
            warnings.warn("dtype=bf16 on a CPU without AVX512-BF16/AMX runs 17-374x slower than fp32", stacklevel=2)
        return cls(autocast, int(deep_cache["interval"]), int(deep_cache["branch"]))

    @property
    def deep_cache(self) -> str:
        return "off" if self.interval == 1 else f"interval={self.interval},branch={self.branch}"

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast when it is on (else nothing): the prompts, the U-Net and the decode share it."""
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast_bf16 else nullcontext()

    @contextmanager
    def active(self, unet: Any) -> Iterator[Any]:
        """Autocast and DeepCache for one pipeline call (a fresh cache: calls count from 0)."""
        with ExitStack() as stack:
            stack.enter_context(self.autocast())
            cache = None
            if self.interval > 1 or self.autocast_bf16:  # the wrapper also hands fp32 noise to the scheduler
                on_engine = getattr(unet, "deep_cache", None)  # the OpenVINO engine's own (runtime.EngineDeepCache)
                make = on_engine or (lambda interval, branch: DeepCache(unet, interval, branch))
                cache = stack.enter_context(make(self.interval, self.branch))
            yield cache


def check_config(dtype: Any, deep_cache: Any) -> None:
    """Raise `FastSamplingError` for bad values (called before any model loads)."""
    if dtype not in DTYPES:
        raise FastSamplingError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    try:
        interval, branch = deep_cache["interval"], deep_cache["branch"]
    except (KeyError, TypeError):
        raise FastSamplingError(f"deep_cache={deep_cache!r}: expected {{interval: N, branch: B}}") from None
    for key, value, low in (("interval", interval, 1), ("branch", branch, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FastSamplingError(f"deep_cache.{key}={value!r}: expected an integer ≥ {low}")


def install(model: torch.nn.Module, options: FastSampling | None) -> None:
    """Attach `options` to a model (None: the plain path); `generate` applies them per pipeline call."""
    if options is not None and options.interval > 1 and not hasattr(model.unet, "deep_cache"):
        DeepCache.check_supported(model.unet, options.branch)  # the engine's U-Net was checked before its export
    setattr(model, _ATTRIBUTE, options)


def installed(model: torch.nn.Module) -> FastSampling | None:
    return getattr(model, _ATTRIBUTE, None)


class DeepCache:
    """Context manager that routes a U-Net's calls through a full or a shallow path.

    Call i (from 0) is full when i % interval == 0: the whole U-Net runs and a hook keeps the feature that
    enters layer `j = n - 1 - branch` of the last up block (n layers). Other calls run conv_in, the first
    `branch` layers of the first down block (their outputs are the skips those up layers read), then up
    layers j..n-1 on the kept feature, and conv_out. The shallow layers run exactly as in the full path, so
    a shallow call given the feature of the same inputs returns the full call's output.
    """

    def __init__(self, unet: UNet2DConditionModel, interval: int, branch: int) -> None:
        if interval > 1:
            self.check_supported(unet, branch)
        self.unet, self.interval, self.branch = unet, interval, branch
        self.calls = 0
        self.kinds: list[str] = []  # "full" | "shallow" per call, for benchmarks
        self._feature: torch.Tensor | None = None
        self._hook: Any = None

    @staticmethod
    def check_supported(unet: Any, branch: int) -> None:
        if not isinstance(unet, UNet2DConditionModel):
            raise FastSamplingError(f"deep_cache needs a diffusers UNet2DConditionModel, not {type(unet).__name__}")
        layers = len(unet.down_blocks[0].resnets)
        if branch > layers or len(unet.up_blocks[-1].resnets) != layers + 1:
            raise FastSamplingError(f"deep_cache.branch={branch}: expected 0 to {layers} for this U-Net")
        if unet.class_embedding is not None or unet.config.addition_embed_type is not None:
            raise FastSamplingError("deep_cache supports U-Nets without class or added embeddings (SD1.x)")

    # --- install / remove ---------------------------------------------------------------------------
    def __enter__(self) -> DeepCache:
        self._hook = feature_hook(self.unet, self.branch, self._keep)
        self.unet.forward = self._forward  # an instance attribute shadows the class's forward
        return self

    def __exit__(self, *exc: object) -> None:
        del self.unet.forward
        self._hook.remove()
        self._feature = None

    def _keep(self, feature: torch.Tensor) -> None:
        self._feature = feature

    # --- the two paths ------------------------------------------------------------------------------
    def _forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, **kwargs: Any):
        unsupported = {"attention_mask", "encoder_attention_mask", "class_labels", "added_cond_kwargs"}
        unsupported |= {"down_block_additional_residuals", "mid_block_additional_residual"}
        plain = any(kwargs.get(k) is not None for k in unsupported)
        full = (
            plain
            or self.calls % self.interval == 0
            or self._feature is None
            or self._feature.shape[0] != sample.shape[0]
        )
        self.calls += 1
        self.kinds.append("full" if full else "shallow")
        return_dict = kwargs.pop("return_dict", True)
        if full:
            forward = type(self.unet).forward  # the class's own, not this wrapper
            out = forward(self.unet, sample, timestep, encoder_hidden_states, return_dict=False, **kwargs)[0]
        else:
            out = self._shallow(sample, timestep, encoder_hidden_states, **kwargs)
        out = out.float()  # the scheduler and the CFG mix get fp32 even under bf16 autocast
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    def _shallow(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        return shallow_forward(
            self.unet, self.branch, sample, timestep, encoder_hidden_states, self._feature,
            timestep_cond=timestep_cond, cross_attention_kwargs=cross_attention_kwargs,
        )  # fmt: skip


def feature_hook(unet: UNet2DConditionModel, branch: int, keep: Callable[[torch.Tensor], None]) -> Any:
    """Hook that hands `keep` the feature entering layer `n - 1 - branch` of the last up block (n layers).

    Shared by the torch DeepCache and the OpenVINO export (which makes these features graph outputs).
    Returns the hook's handle (`.remove()` it).
    """
    up = unet.up_blocks[-1]
    j = len(up.resnets) - 1 - branch
    if j == 0:  # the last up block's input: the deep part's output

        def keep_input(module: Any, args: tuple, kwargs: dict) -> None:
            keep(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

        return up.register_forward_pre_hook(keep_input, with_kwargs=True)
    layer = up.attentions[j - 1] if getattr(up, "attentions", None) else up.resnets[j - 1]  # layer j-1's output

    def keep_output(module: Any, args: tuple, output: Any) -> None:
        keep(output[0] if isinstance(output, tuple) else output)

    return layer.register_forward_hook(keep_output)


def feature_channels(unet: UNet2DConditionModel, branch: int) -> int:
    """Channels of the feature `feature_hook` keeps (its spatial size is the latents')."""
    up = unet.up_blocks[-1]
    j = len(up.resnets) - 1 - branch
    return up.resnets[j - 1].out_channels if j else unet.up_blocks[-2].resnets[-1].out_channels


def shallow_forward(
    unet: UNet2DConditionModel,
    branch: int,
    sample: torch.Tensor,
    timestep: Any,
    encoder_hidden_states: torch.Tensor,
    feature: torch.Tensor,
    timestep_cond: torch.Tensor | None = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """DeepCache's shallow call: conv_in, `branch` first-level layers, the last up block's layers from the
    kept `feature` on, conv_out. The OpenVINO engine exports this function as its shallow graph."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states, added_cond_kwargs=None)

    def layer(block: Any, k: int, h: torch.Tensor) -> torch.Tensor:
        h = block.resnets[k](h, emb)
        if getattr(block, "attentions", None):
            h = block.attentions[k](
                h, encoder_hidden_states=context, cross_attention_kwargs=cross_attention_kwargs, return_dict=False
            )[0]
        return h

    h = unet.conv_in(sample)  # (B, C0, h, w)
    skips = [h]
    down = unet.down_blocks[0]
    for k in range(branch):
        h = layer(down, k, h)
        skips.append(h)
    up = unet.up_blocks[-1]
    h = feature
    for k in range(len(up.resnets) - 1 - branch, len(up.resnets)):
        h = layer(up, k, torch.cat([h, skips.pop()], dim=1))
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)  # (B, 4, h, w)
