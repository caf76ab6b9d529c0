"""`engine: auto | torch | openvino`: which runtime runs the frozen U-Net and VAE decoder.

Why `auto` measures: which runtime is fastest depends on the CPU (its vector units, bf16 and int8 support)
in ways no rule about its flags predicted (docs/engine.md). So `auto` times a few U-Net calls of each
candidate on the first run and keeps the fastest (`ldm.generation.openvino.choice`); later runs read that
choice. `torch` and `openvino` force one and measure nothing. OpenVINO is an optional dependency and its
compiler can fail on some CPUs: there `auto` uses torch, with one warning that says why, and so it does
when building an entry fails (a full disk, an error inside nncf). The text encoder (the fine-tuned part,
and its projection) always stays in torch, so every checkpoint of a base shares one converted U-Net and VAE.
"""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldm.errors import ConfigError, expect, is_int
from ldm.generation import fast
from ldm.generation.openvino.build import EngineBuildError, engine_precision, engine_properties
from ldm.generation.schedulers import SCHEDULERS

if TYPE_CHECKING:
    from ldm.generation.openvino.build import EngineBuild

log = logging.getLogger(__name__)
ENGINES = ("auto", "torch", "openvino")
QUANTIZE = (None, "int8")
__all__ = ["EngineBuildError", "EngineError", "engine_precision", "engine_properties", "install_engine"]


class EngineError(ConfigError):
    """`engine=openvino` asked for but it cannot run here (not installed, failed to compile, unsupported option)."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_engine_config(engine: Any) -> None:
    """Raise `ConfigError` for bad `engine.*` values (before any model loads)."""
    backend = engine.get("backend")
    expect(backend in ENGINES, "engine.backend", backend, " | ".join(ENGINES) + " (its default comes from LDM_ENGINE)")
    expect(engine.get("quantize") in QUANTIZE, "engine.quantize", engine.get("quantize"), "null | int8")
    prompts = engine.get("calibration_prompts")
    expect(
        bool(prompts) and all(isinstance(p, str) and p.strip() for p in prompts),
        "engine.calibration_prompts",
        prompts,
        "a non-empty list of prompts",
    )
    c = engine.get("calibration")
    expect(c is not None, "engine.calibration", c, "{steps, scheduler, guidance_scale, samples}")
    expect(is_int(c.get("steps")) and c.steps >= 1, "engine.calibration.steps", c.get("steps"), "an integer ≥ 1")
    expect(c.get("scheduler") in SCHEDULERS, "engine.calibration.scheduler", c.get("scheduler"), " | ".join(SCHEDULERS))
    scale = c.get("guidance_scale")
    expect(_number(scale) and scale >= 0, "engine.calibration.guidance_scale", scale, "a number ≥ 0")
    samples = c.get("samples")
    expect(samples is None or (is_int(samples) and samples >= 1), "engine.calibration.samples", samples,
           "null (every U-Net call of the calibration renders) or an integer ≥ 1")  # fmt: skip
    cost = engine.get("int8_adherence_cost")
    expect(cost is None or _number(cost), "engine.int8_adherence_cost", cost, "null (not measured) or points")
    bound = engine.get("int8_max_adherence_cost")
    expect(_number(bound), "engine.int8_max_adherence_cost", bound, "a number of points")


def install_engine(model: Any, cfg: Any, device: torch.device) -> str:
    """Swap `model.unet` / `model.vae` for compiled OpenVINO models when the config asks (or `auto` measures
    them faster); return the engine used."""
    engine = cfg.engine
    check_engine_config(engine)
    backend = engine.backend
    if backend == "torch":
        return "torch"
    if device.type != "cpu":
        if backend == "openvino":
            raise EngineError(f"engine.backend=openvino: device={device} (OpenVINO runs the CPU here)")
        log.info("engine.backend=auto: torch (device=%s; the OpenVINO engine runs the CPU)", device)
        return "torch"
    if int(cfg.deep_cache.interval) > 1:  # a bad branch is an error, not a reason to fall back
        fast.DeepCache.check_supported(model.unet, int(cfg.deep_cache.branch))
    try:
        if backend == "openvino":
            build_openvino(model, cfg, engine.quantize)
            return "openvino"
        return choose_and_install(model, cfg)
    except ImportError as err:
        missing = "nncf" if (err.name or "").startswith("nncf") else "OpenVINO"
        reason, cause = f"{missing} is not installed ({err}); pip install '.[openvino]'", err
    except EngineBuildError as err:
        reason, cause = str(err), err
    except OSError as err:  # before RuntimeError's handler: writing an entry (a full disk), not OpenVINO's compiler
        reason, cause = f"building the engine's cache entry under {engine.cache_dir} failed: {err}", err
    except RuntimeError as err:  # OpenVINO's conversion and compile errors
        reason, cause = f"OpenVINO failed: {str(err).strip().splitlines()[0][:300]}", err
    if backend == "openvino":
        raise EngineError(f"engine.backend=openvino: {reason}") from cause
    warnings.warn(f"engine.backend=auto: using torch, because {reason}", stacklevel=2)
    return "torch"


def build_openvino(model: Any, cfg: Any, quantize: str | None, b: EngineBuild | None = None) -> None:
    """Load (or build once) the cached OpenVINO U-Net and VAE decoder for this base (int8 ones for
    `quantize="int8"`) and install them. On a failure the torch U-Net and VAE are back in place."""
    from ldm.generation.openvino import build
    from ldm.generation.openvino.calibration import calibration_fields

    b = b or build.EngineBuild.start(model, cfg)
    folder = build.float_entry(model, b)
    shallow = build.shallow_entries(model, b, cfg)  # exported from the torch U-Net, so before it is dropped
    dropped = build.drop_base_parts(model)  # before the int8 calibration, too: its peak is the build's
    try:
        if quantize == "int8":
            allowed = cfg.engine.quantize == "int8"  # auto may run an int8 entry, never build one
            folder = build.int8_entry(model, b, calibration_fields(cfg.engine), folder, build=allowed)
        build.install(model, b, folder, quantize, shallow)
    except Exception:
        if dropped:
            model.reload_base_parts(dropped)  # `auto` goes on with torch
        raise


def int8_candidate(b: EngineBuild, engine: Any) -> str | None:
    """None when `auto` may time the int8 entry, else why not (a note for its log line).

    Why the conditions: an int8 build is a long calibration, so `auto` uses one only where it is built
    already; and int8 changes the images, so only where its adherence cost against the float engine is
    recorded (`engine.int8_adherence_cost`) and within `engine.int8_max_adherence_cost`.
    """
    from ldm.generation.openvino import build, cache
    from ldm.generation.openvino.calibration import calibration_fields

    cost, bound = engine.int8_adherence_cost, engine.int8_max_adherence_cost
    if cost is None:
        return "int8 is not a candidate: no adherence cost recorded (engine.int8_adherence_cost)"
    if cost > bound:
        return f"int8 is not a candidate: its adherence cost, {cost} points, is above {bound}"
    try:
        folder, expected = build.int8_location(b, calibration_fields(engine))
    except ImportError:
        return "int8 is not a candidate: nncf is not installed"
    if (why := cache.check_entry(folder, expected, files=False)) is not None:
        return f"int8 is not a candidate: no int8 entry for engine.calibration ({why}; engine.quantize=int8 builds it)"
    return None


def choose_and_install(model: Any, cfg: Any) -> str:
    """`engine.backend=auto` on a CPU: the cached choice for this machine and model, or (on a miss) the fastest
    candidate by a few timed U-Net calls each, recorded; OpenVINO is installed when it wins.

    The torch candidate runs at the precision torch would use (bf16 autocast where `dtype` gives bf16),
    OpenVINO's at `engine_precision`. The float entry is built when missing (an export, once per base); an
    int8 one only under `engine.quantize=int8`, which makes int8 the OpenVINO candidate.
    """
    from ldm.generation.openvino import build, choice

    engine = cfg.engine
    b = build.EngineBuild.start(model, cfg)
    torch_name = "torch-bf16" if b.precision == "bf16" else "torch-fp32"
    float_name, int8_name = f"openvino-{b.precision}", f"openvino-{b.precision}-int8"
    notes: list[str] = []
    if engine.quantize == "int8":
        engines = [int8_name]
        notes.append("engine.quantize=int8: int8 is the OpenVINO candidate")
    else:
        engines = [float_name]
        if (why := int8_candidate(b, engine)) is None:
            engines.append(int8_name)
        else:
            notes.append(why)
    threads, shape, candidates = torch.get_num_threads(), list(b.shapes[0]), [torch_name, *engines]
    key = choice.choice_key(b.fingerprint, b.version, torch.__version__, threads, shape, b.precision, candidates)
    path = Path(engine.cache_dir) / choice.FILE
    cached, why = choice.read_choice(path, key)
    if cached is not None and cached.get("choice") in candidates:
        winner = cached["choice"]
        line = choice.describe(winner, cached.get("seconds_per_call", {}), shape, threads, notes)
        log.info("engine.backend=auto: %s (measured %s, cached in %s)", line, cached.get("date"), path)
        if winner == torch_name:
            return "torch"
        build_openvino(model, cfg, "int8" if winner == int8_name else None, b)
        return "openvino"
    log.debug("engine.backend=auto: %s for this CPU and model: timing each candidate's U-Net call", why)
    winner, seconds = measure(model, cfg, b, torch_name, engines)
    choice.write_choice(path, key, winner, seconds, notes)
    line = choice.describe(winner, seconds, shape, threads, notes)
    log.info("engine.backend=auto: %s (measured now, %s; cached in %s)", line, why, path)
    return "torch" if winner == torch_name else "openvino"


def measure(model: Any, cfg: Any, b: EngineBuild, torch_name: str, engines: list[str]) -> tuple[str, dict[str, float]]:
    """Time torch's U-Net call, then each OpenVINO candidate's; install the winner if it is OpenVINO.

    Returns the winner and each candidate's seconds per call. The torch U-Net is timed first and dropped
    before any OpenVINO copy compiles, so their weights never sit side by side; it is back in place when
    torch wins and after any failure.
    """
    from ldm.generation.openvino import build, choice
    from ldm.generation.openvino.calibration import calibration_fields

    inputs = b.example_inputs()
    seconds = {torch_name: choice.time_call(torch_name, torch_unet_call(model.unet, b.precision == "bf16", inputs))}
    folder = build.float_entry(model, b)
    shallow = build.shallow_entries(model, b, cfg)
    dropped = build.drop_base_parts(model)
    try:
        folders = {}
        for name in engines:
            if name.endswith("-int8"):
                allowed = cfg.engine.quantize == "int8"  # never an implicit calibration
                folders[name] = build.int8_entry(model, b, calibration_fields(cfg.engine), folder, build=allowed)
            else:
                folders[name] = folder
            compiled = build.compile_unet(b, folders[name], name)
            seconds[name] = choice.time_call(name, lambda compiled=compiled: compiled(*inputs))
            del compiled  # one compiled copy at a time
            gc.collect()
        winner = min(seconds, key=seconds.__getitem__)
        if winner != torch_name:
            build.install(model, b, folders[winner], "int8" if winner.endswith("-int8") else None, shallow)
    except Exception:
        if dropped:
            model.reload_base_parts(dropped)
        raise
    if winner == torch_name and dropped:
        model.reload_base_parts(dropped)
    return winner, seconds


def torch_unet_call(unet: Any, bf16: bool, inputs: tuple) -> Any:
    """One U-Net call as the torch path runs it (bf16 autocast where it would), on `inputs` (numpy arrays)."""
    tensors = [torch.from_numpy(a) for a in inputs]

    def call() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            unet(*tensors, return_dict=False)

    return call
