"""CPU generation benchmark: diffusers' defaults as the original app used them vs `sample.py`'s defaults.

python benchmarks/sample_cpu.py --quick          # 2 measured steps per variant (the first run also builds
                                                 # the OpenVINO engine and its int8 version: minutes)
python benchmarks/sample_cpu.py                  # 4 measured steps per variant, and the memory settings
python benchmarks/sample_cpu.py --full           # every step of every variant (hours on 2 cores)
python benchmarks/sample_cpu.py --smoke          # tiny random model, under a minute (CI)
python benchmarks/sample_cpu.py --threads 1 --model /models/sd15   # real weights work too

Results: benchmarks/results/sample_cpu[-quick|-full].md and .json (smoke: a temp folder, or --out-dir).

One 512x512 image of SD1.5-size components (random weights built from benchmarks/sd15_config/, written once
to .cache/sd15-random; the cost does not depend on the weight values). Each variant runs in its own
process, so its peak RSS (load included) is its own:
  baseline     StableDiffusionPipeline.from_pretrained + enable_attention_slicing(), PNDM 50 steps, fp32
  ours         sample.py's defaults (conf/sampling/default.yaml) through load_for_inference + generate:
               engine.backend=auto (the runtime measured fastest on this CPU; the first run's choice is cached)
               and the guidance interval [0.2, 0.8] (9 of 15 steps guided; unguided steps run one batch-1 pass)
  ours-10      ours at 10 DPM-Solver++ steps (FEW), the same interval: 6 of 10 steps guided (torch-gi-10: on torch)
  ours-full    ours with every step guided (guidance_interval=[0.0,1.0], diffusers' plain CFG); every
               variant below without -gi guides every step too
  torch-fp32   torch with dtype=fp32, the reference of the latents' error (skipped when torch is fp32)
  torch        ours-full with engine.backend=torch (bf16 autocast where the CPU has a bf16 unit, else fp32)
  openvino     ours-full with engine.backend=openvino: the OpenVINO engine at the CPU's precision
  openvino-int8  openvino + engine.quantize=int8 (calibrated on the benchmark prompt's own trajectory)
  *-gi         the same + guidance_interval=[0.2, 0.8]
  deep-cache   torch + deep_cache.interval=3 (opt-in)   (and deep-cache-fp32)
  openvino[-int8]-deep-cache[-gi]  DeepCache on the engine (its full graph keeps the features, a shallow graph
               reuses them); openvino-int8-deep-cache-gi is the fastest opt-in path
  slicing      torch-fp32 + attention_slicing=on         (time and memory of slicing on our path)
  chan-last    torch-fp32 + the U-Net in channels_last   (the layout sample.py no longer uses)
  vae-tiled    torch-fp32 + VAE tiling forced to 256 px tiles (diffusers tiles only above 512 px by itself)
Unless --full, a variant runs its first K steps (then the pipeline's interrupt flag skips the rest and it
decodes), and s/image is extrapolated: the time before the first U-Net call + every step at the median of its
kind (full / shallow DeepCache, guided / conditional-only; the first step of a kind counts as warm-up when
there are others) + VAE decode + the rest. A variant with the interval (ours, `-gi`) whose measured steps
miss a guided kind, or measured it once and cold, takes it from its sibling without the interval (`SIBLINGS`:
same engine, same shapes, same run); the table says so, and says which numbers are extrapolated. The latents'
error is relative (L2) after the measured steps, vs torch fp32 with every step guided at the same seed (for
variants with the interval it includes the interval's own change of the image).
GFLOP/s counts the matmuls, convolutions and attention of one U-Net call (FlopCounterMode on meta
tensors) over its median time, against the median GFLOP/s of square matmuls measured in this run with the
same threads (bf16 matmuls for bf16 variants; see `roof`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    compose_project_config,
    count_flops,
    default_cache_dir,
    ensure_random_sd15,
    machine_line,
    matmul_peak_gflops,
    run_json_subprocess,
    table,
    write_results,
)
from ldm.hardware import cpu_has_native_bf16

PROMPT = "A dog running on the beach at sunset"
BASELINE_STEPS = 50
GI, FULL, DC = "guidance_interval=[0.2,0.8]", "guidance_interval=[0.0,1.0]", "deep_cache.interval=3"
# the few-step setting: DPM-Solver++ at 10 steps (adherence: benchmarks/adherence.py --variants dpm++-10)
FEW = ["scheduler=dpm++", "steps=10"]
TORCH, INT8 = ["engine.backend=torch"], ["engine.quantize=int8", f"engine.calibration_prompts=['{PROMPT}']"]
OVERRIDES: dict[str, list[str]] = {  # variant -> sample.py overrides; without GI every step is guided (FULL)
    "ours-full": [],
    "torch": TORCH,
    "torch-fp32": [*TORCH, "dtype=fp32"],
    "torch-gi": [*TORCH, GI],
    "torch-gi-10": [*TORCH, GI, *FEW],
    "openvino": ["engine.backend=openvino"],
    "openvino-gi": ["engine.backend=openvino", GI],
    "openvino-int8": ["engine.backend=openvino", *INT8],
    "openvino-int8-gi": ["engine.backend=openvino", *INT8, GI],
    "openvino-deep-cache": ["engine.backend=openvino", DC],
    "openvino-deep-cache-gi": ["engine.backend=openvino", DC, GI],
    "openvino-int8-deep-cache": ["engine.backend=openvino", *INT8, DC],
    "openvino-int8-deep-cache-gi": ["engine.backend=openvino", *INT8, DC, GI],  # the fastest opt-in path
    "deep-cache": [*TORCH, DC],
    "deep-cache-fp32": [*TORCH, DC, "dtype=fp32"],
    "slicing": [*TORCH, "dtype=fp32", "attention_slicing=on"],
    "chan-last": [*TORCH, "dtype=fp32"],
    "vae-tiled": [*TORCH, "dtype=fp32"],
}
VARIANTS = {  # ours: sample.py's defaults as they are (the guidance interval [0.2, 0.8] included)
    "ours": [],
    "ours-10": FEW,  # the few-step setting: 6 of 10 steps guided
    **{name: overrides if GI in overrides else [*overrides, FULL] for name, overrides in OVERRIDES.items()},
}
# the variant a row takes the step kinds it did not measure warm from: the same run without the interval
SIBLINGS = {
    "ours": "ours-full",
    "ours-10": "ours-full",
    "torch-gi-10": "torch",
    **{v: v.removesuffix("-gi") for v in VARIANTS if v.endswith("-gi")},
}
FEW_STEP_TWINS = {"ours-10": "ours", "torch-gi-10": "torch-gi"}  # few-step variant -> the same at 15 steps
QUICK = ["baseline", "ours", "ours-full", "torch", "torch-gi", "torch-fp32", "deep-cache", "openvino", "openvino-gi",
         "openvino-int8", "openvino-int8-gi", "openvino-deep-cache", "openvino-deep-cache-gi",
         "openvino-int8-deep-cache", "openvino-int8-deep-cache-gi"]  # fmt: skip
MODES = {  # measured steps per variant (None: all), variants run
    "smoke": (2, ["baseline", "torch", "ours", "ours-full", "deep-cache"]),
    "quick": (2, QUICK),
    "default": (4, [*QUICK, "deep-cache-fp32", "slicing", "chan-last", "vae-tiled"]),
    "full": (None, [*QUICK, "deep-cache-fp32", "slicing", "chan-last"]),
}


# --- worker: one variant in this process -------------------------------------------------------------
class Recorder:
    """Timestamps of U-Net calls (module hooks), steps (diffusers' step-end callback) and the VAE decode."""

    def __init__(self, unet: torch.nn.Module, vae: Any, max_steps: int | None) -> None:
        self.max_steps = max_steps
        self.calls: list[tuple[float, float]] = []
        self.step_ends: list[float] = []
        self.decode: tuple[float, float] | None = None
        self.latents: torch.Tensor | None = None
        unet.register_forward_pre_hook(lambda *_: self.calls.append((time.perf_counter(), 0.0)))
        unet.register_forward_hook(lambda *_: self._end_call())
        decode = vae.decode

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = decode(*args, **kwargs)
            self.decode = (start, time.perf_counter())
            return out

        vae.decode = timed_decode

    def _end_call(self) -> None:
        self.calls[-1] = (self.calls[-1][0], time.perf_counter())

    def on_step(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        self.step_ends.append(time.perf_counter())
        self.latents = kwargs["latents"].detach().clone()
        if self.max_steps is not None and len(self.step_ends) >= self.max_steps:
            pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
        return kwargs


def _threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def run_baseline(model: str, steps: int, max_steps: int | None, height: int, threads: int | None) -> dict[str, Any]:
    """diffusers' StableDiffusionPipeline as the original app used it: PNDM (the folder's), slicing on, fp32."""
    from diffusers import StableDiffusionPipeline

    _threads(threads)
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.enable_attention_slicing()
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    rec = Recorder(pipe.unet, pipe.vae, max_steps)
    t0 = time.perf_counter()
    pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=7.5,
        height=height,
        width=height,
        generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=rec.on_step,
    )
    t1 = time.perf_counter()
    kinds = ["full"] * len(pipe.scheduler.timesteps)
    return _summary(rec, t0, t1, kinds, load, f"pndm x{steps}", "fp32", "slicing on")


class ExportTimer:
    """Seconds the OpenVINO engine spent building cache entries in this process (0: every entry was a hit)."""

    def __init__(self) -> None:
        from ldm.generation.openvino import cache

        self.seconds, self.cache, self.ensure = 0.0, cache, cache.ensure_entry
        cache.ensure_entry = self._ensure

    def _ensure(self, *args: Any, **kwargs: Any) -> Any:
        folder, seconds = self.ensure(*args, **kwargs)
        self.seconds += seconds or 0.0
        return folder, seconds

    def close(self) -> None:
        self.cache.ensure_entry = self.ensure


def run_ours(
    model: str, overrides: list[str], max_steps: int | None, threads: int | None, name: str, prompt: str = PROMPT
) -> dict[str, Any]:
    """sample.py's path: compose conf/sample.yaml (+ overrides), load_for_inference, generate.

    The image comes back as `_image` (benchmarks/peers/ours_worker.py reads its pixels; run_worker drops it)."""
    from ldm.generation import fast as fast_sampling
    from ldm.generation.loading import load_for_inference
    from ldm.generation.pipeline import generate
    from ldm.generation.settings import SampleSettings

    extra = [f"threads={threads}"] if threads else []
    cfg = compose_project_config(
        "sample", [f"model.pretrained={model}", f"prompt={prompt}", "seed=0", *extra, *overrides]
    )
    start = time.perf_counter()
    timer = ExportTimer() if _has_openvino() else None
    try:
        module = load_for_inference(cfg, base_override=True)
    finally:
        export_s = timer.seconds if timer else 0.0
        if timer:
            timer.close()
    if name == "chan-last":
        module.unet.to(memory_format=torch.channels_last)
    if name == "vae-tiled":  # 256 px tiles (32 latents), diffusers' own overlap and blending
        module.vae.enable_tiling()
        module.vae.tile_sample_min_size, module.vae.tile_latent_min_size = 256, 32
    load = time.perf_counter() - start
    settings = SampleSettings.from_config(cfg, [prompt])
    rec = Recorder(module.unet, module.vae, max_steps)
    fast = fast_sampling.installed(module)
    t0 = time.perf_counter()
    (image,) = generate(module, settings, on_step=rec.on_step, release_models=True)  # as sample.py does
    t1 = time.perf_counter()
    scheduler = image.info["scheduler"]
    steps = settings.steps
    interval = fast.interval if fast else 1
    start_gi, end_gi = settings.guidance_interval
    guided = [settings.guidance_scale > 1 and start_gi <= i / steps < end_gi for i in range(steps)]
    kinds = [("full" if i % interval == 0 else "shallow") + ("" if guided[i] else "-cond") for i in range(steps)]
    extras = [f"deep cache {image.info['deep_cache']}"] if interval > 1 else []
    extras += (
        [f"guidance {start_gi:g}-{end_gi:g} ({sum(guided)}/{steps} steps)"] if "guidance_interval" in image.info else []
    )
    extras += ["calibrated on 1 prompt"] if cfg.engine.quantize else []
    extras += ["slicing on"] if cfg.attention_slicing == "on" else []
    extras += ["channels_last"] if name == "chan-last" else []
    extras += ["VAE tiles 256 px"] if name == "vae-tiled" else []
    summary = _summary(rec, t0, t1, kinds, load, f"{scheduler} x{steps}", image.info["precision"], ", ".join(extras))
    summary["deep_cache"] = {"interval": interval, "branch": fast.branch if fast else 0}
    summary["export_s"] = export_s
    summary["_image"] = image
    return summary


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def run_worker(
    variant: str, model: str, height: int, max_steps: int | None, threads: int | None, latents: Path | None = None
) -> dict[str, Any]:
    if variant == "baseline":
        result = run_baseline(model, BASELINE_STEPS, max_steps, height, threads)
        result.pop("_latents")  # another sampler: not compared
        return result
    result = run_ours(model, VARIANTS[variant], max_steps, threads, variant)
    result.pop("_image")
    if latents is not None:
        torch.save(result.pop("_latents"), latents)
    return result


def _summary(
    rec: Recorder, t0: float, t1: float, kinds: list[str], load: float, solver: str, precision: str, notes: str
) -> dict[str, Any]:
    """Measured times and the extrapolation to every step (see the module docstring)."""
    calls = [end - start for start, end in rec.calls]
    measured = len(rec.step_ends)
    first_call = rec.calls[0][0]
    bounds = [first_call, *rec.step_ends]
    step_times = [b - a for a, b in itertools.pairwise(bounds)]
    per_kind: dict[str, float] = {}
    call_kind: dict[str, float] = {}
    cold: list[str] = []  # kinds measured only once: that one call also paid the kind's one-off costs
    for kind in KINDS:
        idx = [i for i in range(measured) if kinds[i] == kind]
        warm = idx[1:] if len(idx) > 1 else idx  # the first call of a kind pays one-off allocations
        cold += [kind] if len(idx) == 1 else []
        if warm:
            per_kind[kind] = statistics.median(step_times[i] for i in warm)
            call_kind[kind] = statistics.median(calls[i] for i in warm)
    decode = rec.decode[1] - rec.decode[0]
    before = first_call - t0
    after = t1 - rec.decode[1]
    complete = measured == len(kinds)
    missing = sorted({k for k in kinds if k not in per_kind})  # filled from a sibling by the parent
    # a kind with no measured step leaves s/image unmeasured (None) until a sibling fills it: never counted as 0 s
    per_image = (t1 - t0) if complete else image_seconds(before, per_kind, kinds, decode, after)
    rss = _vm_hwm_gib()
    return {
        "_latents": rec.latents,
        "missing_kinds": [] if complete else missing,
        "cold_kinds": [] if complete else cold,
        "borrowed": [],
        "solver": solver,
        "precision": precision,
        "notes": notes,
        "threads": torch.get_num_threads(),
        "load_s": load,
        "before_s": before,
        "calls": len(kinds),
        "measured_steps": measured,
        "kinds": kinds,
        "step_s": per_kind,
        "step_times": step_times,  # each measured step's seconds, in order (the first from its first U-Net call)
        "call_s": call_kind,
        "decode_s": decode,
        "after_s": after,
        "image_s": per_image,
        "extrapolated": not complete,
        "peak_rss_gib": rss,
    }


KINDS = ("full", "shallow", "full-cond", "shallow-cond")


def image_seconds(
    before: float, step_s: dict[str, float], kinds: Sequence[str], decode: float, after: float
) -> float | None:
    """s/image extrapolated from the per-kind step times; None when some step kind of `kinds` has no time."""
    if any(k not in step_s for k in kinds):
        return None
    return before + sum(step_s[k] for k in kinds) + decode + after


def fill_missing_kinds(results: dict[str, dict[str, Any]]) -> None:
    """A variant's unmeasured step kinds from its sibling without the interval (`SIBLINGS`); its s/image again.

    A kind the variant measured once only (the guided step 3 of `--steps 4` with the interval [0.2, 0.8])
    is taken from the sibling too when the sibling measured it warm: a lone first call of a kind includes
    its one-off costs (a first batch-2 call on a compiled engine). A kind that neither measured leaves the
    variant's s/image None: the report marks it unmeasured instead of counting those steps as free.
    """
    for variant, r in results.items():
        sibling = results.get(SIBLINGS.get(variant, ""))
        if sibling is None:
            continue
        sibling_warm = [k for k in sibling["step_s"] if k not in sibling.get("cold_kinds", [])]
        wanted = [*r.get("missing_kinds", []), *(k for k in r.get("cold_kinds", []) if k in sibling_warm)]
        if not wanted:
            continue  # every kind measured warm (or all steps measured): its own time stands
        for kind in wanted:
            if kind in sibling["step_s"]:
                r["step_s"][kind], r["call_s"][kind] = sibling["step_s"][kind], sibling["call_s"][kind]
                r["borrowed"].append(kind)
                if kind in r["missing_kinds"]:
                    r["missing_kinds"].remove(kind)
        r["image_s"] = image_seconds(r["before_s"], r["step_s"], r["kinds"], r["decode_s"], r["after_s"])


def relative_errors(results: dict[str, dict[str, Any]], latents: dict[str, Path]) -> None:
    """L2 error of each variant's latents after the measured steps, relative to torch fp32's."""
    torch_fp32 = ("torch-fp32", "torch")  # every step guided; torch is fp32 at `dtype: auto` without a bf16 unit
    reference = next((v for v in torch_fp32 if results.get(v, {}).get("precision") == "fp32"), None)
    if reference is None or reference not in latents:
        return
    ref = torch.load(latents[reference])
    for variant, path in latents.items():
        other = torch.load(path)
        if other is not None and other.shape == ref.shape:
            results[variant]["latent_rel_error"] = float((other - ref).norm() / ref.norm())


def _vm_hwm_gib() -> float:
    """Peak RSS of this process (VmHWM), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return float("nan")


# --- parent: FLOPs, matmul roof, the table -----------------------------------------------------------
def unet_flops(model: str, height: int, branch: int) -> dict[str, float]:
    """FLOPs of one CFG U-Net call (batch 2) in full and shallow (DeepCache) form, on meta tensors."""
    from diffusers import UNet2DConditionModel

    from ldm.generation.fast import DeepCache

    config = UNet2DConditionModel.load_config(model, subfolder="unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).eval()
        side = height // 8
        x = torch.randn(2, unet.config.in_channels, side, side)
        context = torch.randn(2, 77, unet.config.cross_attention_dim)
        t = torch.tensor(500)
        with torch.no_grad(), DeepCache(unet, 2, branch):
            full = count_flops(lambda: unet(x, t, context))
            shallow = count_flops(lambda: unet(x, t, context))
    return {"full": full, "shallow": shallow}


def roof(dtype: torch.dtype, smoke: bool) -> float:
    """The matmul peak: the best, over a few square sizes (not powers of two: cache aliasing), of the
    median GFLOP/s of 3 runs. A best, not a median, because other processes only ever slow it down."""
    sizes = (256,) if smoke else (1536, 2000, 3000)
    return max(matmul_peak_gflops(dtype, size, repeats=3) for size in sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    for flag in ("quick", "full", "smoke"):
        mode.add_argument(f"--{flag}", action="store_true")
    parser.add_argument("--model", help="a diffusers folder (default: the random SD1.5 in the cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every variant")
    parser.add_argument("--variants", nargs="+", choices=["baseline", *VARIANTS], help="override the mode's list")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per variant (default: the mode's)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--out-dir", type=Path, help="where the results go (default: benchmarks/results; smoke: temp)")
    parser.add_argument("--name", help="results file name without .md/.json (default: sample_cpu[-MODE])")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--latents", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.model, args.height, args.max_steps, args.threads, args.latents)))
        return

    name = "smoke" if args.smoke else "quick" if args.quick else "full" if args.full else "default"
    max_steps, variants = MODES[name]
    max_steps = args.steps or max_steps
    variants = args.variants or variants
    if args.smoke:
        from ldm.tiny import ensure_tiny_pretrained

        model, height = ensure_tiny_pretrained(default_cache_dir() / "tiny-sd15"), 64
    else:
        model, height = str(ensure_random_sd15(args.model or default_cache_dir() / "sd15-random")), 512
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_line()
    # bf16 only where the CPU has a bf16 unit: emulated bf16 matmuls take minutes and no variant runs bf16 there
    roofs = {"fp32": roof(torch.float32, args.smoke)}
    roofs["bf16"] = roof(torch.bfloat16, args.smoke) if cpu_has_native_bf16() else float("nan")
    results: dict[str, dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="sample_cpu-"))
    latents: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for variant in variants:
        twin = "torch" if variant == "torch-fp32" else variant.removesuffix("-fp32")
        if variant.endswith("-fp32") and results.get(twin, {}).get("precision") == "fp32":
            continue  # `dtype: auto` already picked fp32 on this CPU: the same run twice
        worker = [__file__, "--worker", variant, "--model", model, "--height", str(height)]
        worker += ["--threads", str(args.threads)] if args.threads else []
        worker += ["--max-steps", str(max_steps)] if max_steps else []
        latents[variant] = work / f"{variant}.pt"
        worker += ["--latents", str(latents[variant])] if variant != "baseline" else []
        # smoke: in this process (seconds; its RSS is shared); otherwise one process per variant (its own peak RSS)
        if args.smoke:
            results[variant] = run_worker(
                variant, model, height, max_steps, args.threads, latents[variant] if variant != "baseline" else None
            )
        else:
            try:
                results[variant] = run_json_subprocess(worker)
            except RuntimeError as err:  # one variant failing (say, an OpenVINO compile error) keeps the others
                failed[variant] = str(err).strip().splitlines()[-1][:200]
                print(f"# {variant} failed: {err}", file=sys.stderr, flush=True)
                continue
        results[variant].pop("_latents", None)
        print(f"# {variant}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if name in ("default", "full"):  # measured again at the end: the machine may have been busier at the start
        roofs = {
            k: max(v, roof(torch.float32 if k == "fp32" else torch.bfloat16, False)) if v == v else v
            for k, v in roofs.items()
        }
    branch = next((r["deep_cache"]["branch"] for r in results.values() if "deep_cache" in r), 0)
    flops = unet_flops(model, height, branch)
    latents.pop("baseline", None)
    fill_missing_kinds(results)
    relative_errors(results, {k: v for k, v in latents.items() if v.is_file()})
    shutil.rmtree(work, ignore_errors=True)
    report = print_report(results, roofs, flops, machine, name, max_steps, height, time.perf_counter() - started)
    if failed:
        lines = report.splitlines()  # the speed-up line stays last
        report = "\n".join([*lines[:-1], *(f"failed: {v}: {why}" for v, why in failed.items()), lines[-1]])
    print(report)
    data = {"machine": machine, "roofs": roofs, "flops": flops, "results": results, "failed": failed}
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="sample_cpu-smoke-")) if args.smoke else None)
    stem = args.name or ("sample_cpu" if name == "default" else f"sample_cpu-{name}")
    for path in write_results(stem, report, data, out_dir=out_dir):
        print(f"# wrote {path}", file=sys.stderr)


def print_report(
    results: dict[str, dict[str, Any]],
    roofs: dict[str, float],
    flops: dict[str, float],
    machine: str,
    mode: str,
    max_steps: int | None,
    height: int,
    elapsed: float,
) -> str:
    base = results.get("baseline", {}).get("image_s")
    rows = []
    for variant, r in results.items():
        peak = roofs["bf16" if "bf16" in r["precision"] else "fp32"]
        call_cells, rate_cells = [], []
        for kind in KINDS:
            if kind in r["call_s"]:
                seconds = r["call_s"][kind]
                work = flops[kind.removesuffix("-cond")] / (2 if kind.endswith("-cond") else 1)  # batch 1 of 2
                rate = work / seconds / 1e9
                label = {"full": "", "shallow": " shallow", "full-cond": " cond", "shallow-cond": " shallow cond"}[kind]
                borrowed = " from sibling" if kind in r.get("borrowed", []) else ""
                call_cells.append(f"{seconds:.2f}{label}{borrowed}")
                rate_cells.append(f"{rate:.0f} ({100 * rate / peak:.0f}%)")
        error = r.get("latent_rel_error")
        rows.append(
            [
                variant,
                r["solver"],
                r["precision"] + (f", {r['notes']}" if r["notes"] else ""),
                " / ".join(call_cells),
                " / ".join(rate_cells),
                r["decode_s"],
                image_cell(variant, r),
                f"{base / r['image_s']:.2f}x" if base and r["image_s"] else "-",
                f"{r['peak_rss_gib']:.2f}",
                f"{r.get('export_s', 0):.0f}" if r.get("export_s") else "-",
                "-" if error is None else f"{error:.4f}",
            ]
        )
    steps = "all steps" if max_steps is None else f"first {max_steps} steps measured per variant, the rest extrapolated"
    lines = [f"## sample_cpu ({mode}): one {height}x{height} image, {steps}", f"machine: {machine}"]
    lines.append(
        f"matmul peak (GFLOP/s, best square size, this run): fp32 {roofs['fp32']:.0f}, bf16 {roofs['bf16']:.0f}; "
        f"one CFG U-Net call = {flops['full'] / 1e9:,.0f} GFLOP (shallow DeepCache call {flops['shallow'] / 1e9:,.0f})"
    )
    headers = ["variant", "solver x steps", "precision, settings", "s per U-Net call (guided / cond / shallow)",
               "GFLOP/s (% of peak)", "VAE decode s", "s/image", "vs baseline", "peak RSS GiB", "export s",
               "latents rel. error vs torch fp32"]  # fmt: skip
    lines += ["", table(headers, rows), ""]
    lines.append(
        f"(total {elapsed:.0f} s; s per U-Net call: median over measured calls after the first of each kind; "
        "cond = one conditional batch-1 pass outside the guidance interval; export s: one-off engine build)"
    )
    ours = results.get("ours", {}).get("image_s")
    if base and ours:
        lines.append(f"speed-up of sample.py's default over the baseline: {base / ours:.2f}x")
    elif base and "ours" in results:
        why = image_cell("ours", results["ours"])
        lines.append(f"speed-up of sample.py's default over the baseline: not measured ({why})")
    for few, twin in FEW_STEP_TWINS.items():
        few_s, twin_s = results.get(few, {}).get("image_s"), results.get(twin, {}).get("image_s")
        if few_s and twin_s:
            lines.append(f"speed-up of {few} (10 steps) over {twin} (15 steps), same run: {twin_s / few_s:.2f}x")
    return "\n".join(lines)


def image_cell(variant: str, r: dict[str, Any]) -> str:
    """The s/image cell: the time, or why there is none (a step kind that no measured step covered)."""
    if r["image_s"] is not None:
        return f"{r['image_s']:.1f}" + (" (extrapolated)" if r["extrapolated"] else "")
    fix = f"add --variants {SIBLINGS[variant]}" if variant in SIBLINGS else "measure more --steps"
    return f"not measured: no {', '.join(r['missing_kinds'])} step timed ({fix})"


if __name__ == "__main__":
    main()
