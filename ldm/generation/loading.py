"""From a config to a model ready to sample: device, threads, checkpoint, inference mode, fast paths.

Why one loader: sample.py, the app, evaluate.py and the benchmarks must sample the same model the same
way, so a setting that works in one works in all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from ldm.errors import SamplingError, is_int
from ldm.generation import fast
from ldm.generation.checkpoints import build_model
from ldm.generation.engine import check_engine_config, install_engine
from ldm.generation.fast import FastSampling
from ldm.generation.settings import _require
from ldm.training.module import TextEncoderFineTuner

ATTENTION_SLICING = ("off", "auto", "on")


def resolve_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`; a GPU that isn't there is a clear error, not a CUDA traceback."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SamplingError(f"device={name!r}: expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError(f"device={name!r} but torch sees no CUDA GPU here; use device=cpu")
    return device


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (null: torch's own choice, usually the number of cores)."""
    if threads is not None:
        _require(is_int(threads) and threads >= 1, f"threads={threads!r}: expected null or an integer ≥ 1")
        torch.set_num_threads(threads)


def _check_attention_slicing(value: str) -> None:
    _require(value in ATTENTION_SLICING, f"attention_slicing={value!r}: expected one of {', '.join(ATTENTION_SLICING)}")


def prepare_for_inference(model: TextEncoderFineTuner, device: torch.device, attention_slicing: str) -> None:
    """Frozen eval copy on `device`: fp16 on a GPU, fp32 on a CPU (bf16 autocast is `ldm.generation.fast`'s).

    No channels_last on CPU: it gave no measurable speed and cost 2.0 GiB (docs/performance.md), because
    the copies sit beside the memory-mapped weights that `from_pretrained` keeps. Attention slicing saves
    memory at a cost (a slower U-Net on CPU: docs/design.md): `auto` = GPU only.
    """
    _check_attention_slicing(attention_slicing)
    model.requires_grad_(False)
    model.eval()
    model.to(device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    if attention_slicing == "on" or (attention_slicing == "auto" and device.type == "cuda"):
        model.unet.set_attention_slice("auto")


def base_chosen_on_command_line() -> bool:
    """Under @hydra.main: did the user type `model=...` or `model.pretrained=...` (wins over a checkpoint's base)?"""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return bool(keys & {"model", "model.pretrained"})


def load_for_inference(cfg: Any, *, base_override: bool) -> TextEncoderFineTuner:
    """The model of `cfg.model` + `cfg.checkpoint`, ready to sample on `cfg.device` with `cfg.threads`.

    With the OpenVINO engine (`cfg.engine`), `model.unet` and `model.vae` are compiled OpenVINO models: bf16
    autocast does not apply (OpenVINO picks its own precision), and DeepCache runs on the engine's graphs.
    """
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    _check_attention_slicing(cfg.attention_slicing)  # before the model loads
    check_engine_config(cfg.engine)
    options = FastSampling.from_config(cfg.dtype, cfg.deep_cache, device)
    model = build_model(cfg.model, cfg.checkpoint, base_override=base_override)
    prepare_for_inference(model, device, cfg.attention_slicing)
    engine = install_engine(model, cfg, device)
    if engine == "openvino":  # OpenVINO picks its own precision; DeepCache runs on the engine's own graphs
        options = replace(options, autocast_bf16=False) if options.interval > 1 else None
    fast.install(model, options)
    return model
