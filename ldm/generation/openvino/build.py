"""The engine's cache entries for one model (float, int8, DeepCache's shallow graphs) and their installation.

Why apart from `ldm.generation.engine`: that module decides which runtime runs (a forced backend, or
`auto`'s measurement) and what a failure falls back to; this one only builds, finds and compiles entries,
the same way for every caller.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.generation import fast
from ldm.hardware import cpu_has_native_bf16


def engine_precision(dtype: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT: bf16 where the CPU has a bf16 unit (or dtype=bf16), else f32."""
    if dtype == "bf16" or (dtype == "auto" and cpu_has_native_bf16()):
        return "bf16"
    return "f32"


def engine_properties(precision: str, threads: int) -> dict[str, Any]:
    """The CPU plugin's compile options: the precision, one stream of `threads` threads, tuned for latency."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}


class EngineBuildError(Exception):
    """A cache entry could not be built for a reason other than the disk (nncf failed inside its quantization,
    an int8 entry that `auto` may not rebuild is incomplete). `auto` falls back to torch on it."""


@dataclass
class EngineBuild:
    """What every entry of one model shares: its cache folder, OpenVINO's core and version, the precision
    and compile options, and the shape the model will render at (the requested size, or its native one)."""

    core: Any
    root: Path
    fingerprint: str
    version: str
    precision: str
    properties: dict[str, Any]
    shapes: tuple[tuple[int, ...], ...]  # the U-Net's inputs: sample (B, C, h, w), timestep (1,), context (B, T, D)
    unet_config: Any
    vae_config: Any

    @classmethod
    def start(cls, model: Any, cfg: Any) -> EngineBuild:
        """Import OpenVINO (ImportError where it is not installed) and fingerprint the model's U-Net and VAE."""
        import openvino as ov

        from ldm.generation.openvino import cache

        fingerprint = cache.fingerprint(model.unet, model.vae)
        root = Path(cfg.engine.cache_dir) / fingerprint
        core = ov.Core()
        core.set_property("CPU", {"CACHE_DIR": str(root / "compiled")})
        precision = engine_precision(cfg.dtype)
        unet, vae = model.unet.config, model.vae.config
        scale = 2 ** (len(vae.block_out_channels) - 1)
        h = cfg.height // scale if cfg.get("height") else unet.sample_size
        w = cfg.width // scale if cfg.get("width") else unet.sample_size
        batch = 2 if float(cfg.get("guidance_scale", 7.5)) > 1 else 1  # a guided step: the CFG pair as one call
        tokens = model.tokenizer.model_max_length
        shapes = ((batch, unet.in_channels, h, w), (1,), (batch, tokens, unet.cross_attention_dim))
        properties = engine_properties(precision, torch.get_num_threads())
        return cls(core, root, fingerprint, ov.get_version(), precision, properties, shapes, unet, vae)

    @property
    def tokens(self) -> int:
        return self.shapes[2][1]

    def expected(self, quantize: str | None, **extra: Any) -> dict[str, Any]:
        """The manifest fields an entry must match."""
        return {"fingerprint": self.fingerprint, "openvino": self.version, "precision": self.precision,
                "quantize": quantize, **extra}  # fmt: skip

    def example_inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seeded U-Net inputs of `shapes` (what `auto` times each candidate on)."""
        g = torch.Generator().manual_seed(seed)
        sample, _, context = self.shapes
        return (torch.randn(sample, generator=g).numpy(), np.array([500.0], dtype=np.float32),
                torch.randn(context, generator=g).numpy())  # fmt: skip


def float_folder(b: EngineBuild) -> Path:
    from ldm.generation.openvino import cache

    return b.root / cache.entry_key(b.version, b.precision, None)


def float_entry(model: Any, b: EngineBuild) -> Path:
    """The float U-Net and VAE decoder's entry, exported from the torch modules once."""
    from ldm.generation.openvino import cache, export

    side = b.unet_config.sample_size  # the tracing example's size; the IR's shapes stay dynamic

    def build_float(tmp: Path) -> list[str]:
        export.save(export.convert_unet(model.unet, b.tokens), tmp / export.UNET_FILE, b.precision)
        export.save(export.convert_vae_decoder(model.vae, side), tmp / export.VAE_FILE, b.precision)
        return [name for f in (export.UNET_FILE, export.VAE_FILE) for name in (f, f.replace(".xml", ".bin"))]

    folder, _ = cache.ensure_entry(float_folder(b), b.expected(None), build_float, "U-Net and VAE decoder")
    return folder


def int8_location(b: EngineBuild, fields: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The int8 entry's folder and manifest fields for the calibration `fields` (`calibration_fields`)."""
    from ldm.generation.openvino import cache
    from ldm.generation.openvino.calibration import calibration_tag

    folder = b.root / cache.entry_key(b.version, b.precision, "int8", calibration_tag(fields))
    return folder, b.expected("int8", calibration=fields)


def int8_entry(model: Any, b: EngineBuild, fields: dict[str, Any], float_path: Path, *, build: bool = True) -> Path:
    """The int8 entry: the U-Net's weights and activations (calibrated on its own trajectories) and the VAE
    decoder's weights. `build=False` (auto's int8 candidate): an incomplete entry is an `EngineBuildError`,
    never an implicit ten-minute calibration."""
    from ldm.generation.openvino import cache, export
    from ldm.generation.openvino.calibration import calibration_samples

    folder, expected = int8_location(b, fields)
    if not build and (why := cache.check_entry(folder, expected)) is not None:
        raise EngineBuildError(f"the int8 entry {folder} cannot be used ({why}); engine.quantize=int8 builds it again")

    def build_int8(tmp: Path) -> list[str]:
        samples = calibration_samples(model, b.core, float_path, b.properties, fields, b.unet_config, b.vae_config)
        float_unet = b.core.read_model(str(float_path / export.UNET_FILE))
        unet = _nncf("quantizing the U-Net", export.quantize_unet, float_unet, samples)
        export.save(unet, tmp / export.UNET_FILE, b.precision)
        del unet, float_unet, samples
        gc.collect()
        vae = _nncf("compressing the VAE decoder", export.compress_weights,
                    b.core.read_model(str(float_path / export.VAE_FILE)))  # fmt: skip
        export.save(vae, tmp / export.VAE_FILE, b.precision)
        return [name for f in (export.UNET_FILE, export.VAE_FILE) for name in (f, f.replace(".xml", ".bin"))]

    folder, _ = cache.ensure_entry(folder, expected, build_int8, "int8 U-Net and VAE")
    return folder


def _nncf(what: str, fn: Any, *args: Any) -> Any:
    """`fn(*args)`, an nncf step: any failure inside it becomes an `EngineBuildError` that names nncf."""
    try:
        return fn(*args)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise EngineBuildError(f"nncf failed {what}: {type(err).__name__}: {first}") from err


def shallow_entries(model: Any, b: EngineBuild, cfg: Any) -> dict[int, tuple[Path, int]]:
    """DeepCache's shallow graph of `deep_cache.branch` (when it is on): {branch: (folder, feature channels)}.

    Exported from the torch U-Net, so before it is dropped. It stays float under `engine.quantize=int8`
    too: it holds a few percent of the U-Net's weights.
    """
    from ldm.generation.openvino import cache, export

    if int(cfg.deep_cache.interval) <= 1:
        return {}
    branch = int(cfg.deep_cache.branch)

    def build(tmp: Path) -> list[str]:
        unet = export.convert_shallow_unet(model.unet, branch, b.tokens)
        export.save(unet, tmp / export.SHALLOW_FILE, b.precision)
        return [export.SHALLOW_FILE, export.SHALLOW_FILE.replace(".xml", ".bin")]

    key = cache.entry_key(b.version, b.precision, None, f"shallow{branch}")
    what = f"DeepCache shallow U-Net (branch {branch})"
    folder, _ = cache.ensure_entry(b.root / key, b.expected(None, branch=branch), build, what)
    return {branch: (folder, fast.feature_channels(model.unet, branch))}


def drop_base_parts(model: Any) -> list[str]:
    """Free the torch U-Net and VAE before the engine compiles (or calibrates); return the names dropped.

    Why before: their weights (gigabytes for SD1.5, resident once the fingerprint has read them) would sit
    beside the engine's compiled copy at the peak. Only the base's own parts are dropped, the ones
    `reload_base_parts` can load again; a fine-tuned U-Net or VAE stays until the engine has compiled.
    """
    names = [n for n in ("unet", "vae") if n in model.frozen_names]
    for name in names:
        setattr(model, name, None)
    gc.collect()
    return names


def compile_unet(b: EngineBuild, folder: Path, name: str) -> Any:
    """The entry's U-Net compiled at the build's shape (a blob from CACHE_DIR after the first time)."""
    from ldm.generation.openvino import export
    from ldm.generation.openvino.runtime import CompiledByShape

    unet = CompiledByShape(b.core, folder / export.UNET_FILE, b.properties, name)
    unet.compile(b.shapes)  # one copy serves batch 2 (guided) and 1 (unguided)
    return unet


def install(model: Any, b: EngineBuild, folder: Path, quantize: str | None, shallow: dict[int, tuple[Path, int]]):
    """Compile the entry's U-Net, VAE decoder and shallow graphs and put them in place of the torch modules.

    Compiled now, not at the first step: `auto` falls back to torch on a compile error, and the cached
    blobs make this the few seconds a second run takes.
    """
    from ldm.generation.openvino import export
    from ldm.generation.openvino.runtime import CompiledByShape, OpenVINOUNet, OpenVINOVAE

    unet = compile_unet(b, folder, "U-Net")
    vae = CompiledByShape(b.core, folder / export.VAE_FILE, b.properties, "VAE decoder")
    sample = b.shapes[0]
    vae.compile(((1, b.vae_config.latent_channels, *sample[2:]),))
    graphs = {}
    for branch, (shallow_folder, features) in shallow.items():
        graphs[branch] = CompiledByShape(b.core, shallow_folder / export.SHALLOW_FILE, b.properties, "shallow U-Net")
        graphs[branch].compile((*b.shapes, (sample[0], features, *sample[2:])))
    label = f"openvino-{b.precision}" + (f"-{quantize}" if quantize else "")
    model.unet = OpenVINOUNet(unet, b.unet_config, label, graphs)
    model.vae = OpenVINOVAE(vae, b.vae_config, label)
    gc.collect()
