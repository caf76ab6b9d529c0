"""`engine: auto | torch | openvino`: which runtime runs the frozen U-Net and VAE decoder.

Why a choice, and `auto` by default: on a Zen 4 with a bf16 unit OpenVINO ran the base's U-Net 1.2x faster
than torch's bf16 autocast (int8: 2.0x), at 4.4 GiB peak RSS against torch's 4.0; on an AVX2-only EPYC, at
f32, it rendered an image only 1.0-1.2x faster than torch, at 2-3x the memory (docs/engine.md). So `auto`
tries OpenVINO on a CPU at bf16 only (`auto_picks_openvino`). It is an optional dependency and its compiler
can fail on some CPUs: there `auto` uses torch, with one warning that says why. The text encoder (the
fine-tuned part, and its projection)
always stays in torch, so every checkpoint of a base shares one converted U-Net and VAE.
"""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.errors import ConfigError, expect
from ldm.generation import fast
from ldm.hardware import cpu_has_native_bf16

log = logging.getLogger(__name__)
ENGINES = ("auto", "torch", "openvino")
QUANTIZE = (None, "int8")


class EngineError(ConfigError):
    """`engine=openvino` asked for but it cannot run here (not installed, failed to compile, unsupported option)."""


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


def engine_precision(dtype: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT: bf16 where the CPU has a bf16 unit (or dtype=bf16), else f32."""
    if dtype == "bf16" or (dtype == "auto" and cpu_has_native_bf16()):
        return "bf16"
    return "f32"


def engine_properties(precision: str, threads: int) -> dict[str, Any]:
    """The CPU plugin's compile options: the precision, one stream of `threads` threads, tuned for latency."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}


def auto_picks_openvino(device: torch.device, precision: str) -> bool:
    """Where `engine.backend=auto` tries OpenVINO: the CPU, at bf16 (a CPU with a bf16 unit, dtype auto or bf16).

    Why not everywhere it imports: at bf16 on a Zen 4 the engine rendered `sample.py`'s default image 1.4x
    faster than torch's bf16 autocast (14.4x against 10.2x the baseline, 4.4 against 4.0 GiB); at f32 (an
    AVX2 CPU, or dtype=fp32) it was 1.0-1.2x faster than torch at 2-3x the memory, after a one-off export of
    minutes (docs/engine.md). A GPU runs torch fp16.
    """
    return device.type == "cpu" and precision == "bf16"


def install_engine(model: Any, cfg: Any, device: torch.device) -> str:
    """Swap `model.unet` / `model.vae` for compiled OpenVINO models when the config asks; return the engine used."""
    engine = cfg.engine
    check_engine_config(engine)
    backend = engine.backend
    if backend == "torch":
        return "torch"
    if backend == "auto" and not auto_picks_openvino(device, engine_precision(cfg.dtype)):
        log.info("engine.backend=auto: torch (OpenVINO pays on a CPU at bf16 only: docs/engine.md)")
        return "torch"
    reason = None
    if device.type != "cpu":
        reason = f"device={device} (OpenVINO runs the CPU here)"
    elif int(cfg.deep_cache.interval) > 1:  # a bad branch is an error, not a reason to fall back
        fast.DeepCache.check_supported(model.unet, int(cfg.deep_cache.branch))
    if reason is None:
        try:
            build_openvino(model, cfg)
            return "openvino"
        except ImportError as err:
            reason = f"OpenVINO is not installed ({err}); pip install '.[openvino]'"
        except RuntimeError as err:  # OpenVINO's conversion and compile errors
            reason = f"OpenVINO failed: {str(err).strip().splitlines()[0][:300]}"
    if backend == "openvino":
        raise EngineError(f"engine.backend=openvino: {reason}")
    warnings.warn(f"engine.backend=auto: using torch, because {reason}", stacklevel=2)
    return "torch"


def build_openvino(model: Any, cfg: Any) -> None:
    """Load (or build once) the cached OpenVINO U-Net and VAE decoder for this base and install them."""
    import openvino as ov

    from ldm.generation.openvino import cache, export
    from ldm.generation.openvino.runtime import CompiledByShape, OpenVINOUNet, OpenVINOVAE

    engine = cfg.engine
    precision, quantize = engine_precision(cfg.dtype), engine.quantize
    fingerprint = cache.fingerprint(model.unet, model.vae)
    root = Path(engine.cache_dir) / fingerprint
    version = ov.get_version()
    core = ov.Core()
    core.set_property("CPU", {"CACHE_DIR": str(root / "compiled")})
    properties = engine_properties(precision, torch.get_num_threads())
    side, tokens = model.unet.config.sample_size, model.tokenizer.model_max_length

    def expected(q: str | None) -> dict[str, Any]:
        return {"fingerprint": fingerprint, "openvino": version, "precision": precision, "quantize": q}

    def build_float(tmp: Path) -> list[str]:
        export.save(export.convert_unet(model.unet, tokens), tmp / export.UNET_FILE, precision)
        export.save(export.convert_vae_decoder(model.vae, side), tmp / export.VAE_FILE, precision)
        return [name for f in (export.UNET_FILE, export.VAE_FILE) for name in (f, f.replace(".xml", ".bin"))]

    folder, _ = cache.ensure_entry(
        root / cache.entry_key(version, precision, None), expected(None), build_float, "U-Net and VAE decoder"
    )
    if quantize == "int8":
        float_folder = folder

        def build_int8(tmp: Path) -> list[str]:
            samples = calibration_samples(model, core, float_folder, properties, cfg)
            unet = export.quantize_unet(core.read_model(str(float_folder / export.UNET_FILE)), samples)
            export.save(unet, tmp / export.UNET_FILE, precision)
            vae = export.compress_weights(core.read_model(str(float_folder / export.VAE_FILE)))
            export.save(vae, tmp / export.VAE_FILE, precision)
            return [name for f in (export.UNET_FILE, export.VAE_FILE) for name in (f, f.replace(".xml", ".bin"))]

        folder, _ = cache.ensure_entry(
            root / cache.entry_key(version, precision, "int8"), expected("int8"), build_int8, "int8 U-Net and VAE"
        )
    shallow_folders, features = {}, {}
    if int(cfg.deep_cache.interval) > 1:  # exported from the torch U-Net, so before it is dropped
        branch = int(cfg.deep_cache.branch)
        shallow_folders[branch] = shallow_entry(model, root, expected(None), branch, tokens)
        features[branch] = fast.feature_channels(model.unet, branch)
    unet_config, vae_config = model.unet.config, model.vae.config
    dropped = drop_base_parts(model)
    try:
        unet = CompiledByShape(core, folder / export.UNET_FILE, properties, "U-Net")
        vae = CompiledByShape(core, folder / export.VAE_FILE, properties, "VAE decoder")
        inputs = ((2, unet_config.in_channels, side, side), (1,), (2, tokens, unet_config.cross_attention_dim))
        # compiled now, not at the first step: `auto` falls back to torch on a compile error, and the cached
        # blobs make this the few seconds a second run takes; one copy serves batch 2 (guided) and 1 (unguided)
        unet.compile(inputs)
        vae.compile(((1, vae_config.latent_channels, side, side),))
        shallow = {}
        for branch, shallow_folder in shallow_folders.items():
            shallow[branch] = CompiledByShape(core, shallow_folder / export.SHALLOW_FILE, properties, "shallow U-Net")
            shallow[branch].compile((*inputs, (2, features[branch], side, side)))
    except Exception:
        if dropped:
            model.reload_base_parts(dropped)  # `auto` goes on with torch
        raise
    label = f"openvino-{precision}" + (f"-{quantize}" if quantize else "")
    model.unet = OpenVINOUNet(unet, unet_config, label, shallow)
    model.vae = OpenVINOVAE(vae, vae_config, label)
    gc.collect()


def drop_base_parts(model: Any) -> list[str]:
    """Free the torch U-Net and VAE before the engine compiles; return the names dropped.

    Why before: their weights (3.7 GB for SD1.5, resident once the fingerprint has read them) would sit
    beside the engine's compiled copy at the peak. Only the base's own parts are dropped, the ones
    `reload_base_parts` can load again; a fine-tuned U-Net or VAE stays until the engine has compiled.
    """
    names = [n for n in ("unet", "vae") if n in model.frozen_names]
    for name in names:
        setattr(model, name, None)
    gc.collect()
    return names


def shallow_entry(model: Any, root: Path, expected: dict[str, Any], branch: int, tokens: int) -> Path:
    """The cache entry of DeepCache's shallow U-Net graph of `branch` (built once, in seconds).

    It stays float under `engine.quantize=int8` too: it holds a few percent of the U-Net's weights.
    """
    import openvino as ov

    from ldm.generation.openvino import cache, export

    precision = expected["precision"]

    def build(tmp: Path) -> list[str]:
        export.save(export.convert_shallow_unet(model.unet, branch, tokens), tmp / export.SHALLOW_FILE, precision)
        return [export.SHALLOW_FILE, export.SHALLOW_FILE.replace(".xml", ".bin")]

    key = cache.entry_key(ov.get_version(), precision, None, f"shallow{branch}")
    what = f"DeepCache shallow U-Net (branch {branch})"
    folder, _ = cache.ensure_entry(root / key, {**expected, "branch": branch}, build, what)
    return folder


def calibration_samples(
    model: Any, core: Any, folder: Path, properties: dict, cfg: Any
) -> list[tuple[np.ndarray, ...]]:
    """The U-Net's inputs along its own denoising trajectories for `engine.calibration_prompts`.

    Rendered with the float engine through `generate` (sample.py's path), so int8 statistics come from the
    latents, timesteps and conditionings the model really sees, not random tensors.
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
    model.unet = OpenVINOUNet(record, torch_unet.config, "calibration")  # type: ignore[arg-type]
    model.vae = OpenVINOVAE(decode, torch_vae.config, "calibration")
    try:
        prompts: Sequence[str] = list(cfg.engine.calibration_prompts)
        settings = SampleSettings(
            prompts=tuple(prompts), negative_prompt="", steps=cfg.steps, guidance_scale=cfg.guidance_scale,
            scheduler=cfg.scheduler, seed=0, height=None, width=None, num_images=1, batch_size=1,
        )  # fmt: skip
        generate(model, settings)
    finally:
        model.unet, model.vae = torch_unet, torch_vae
    return samples
