"""One SD1.5-size U-Net call on each engine this project can run it on: which is fastest on this CPU.

python benchmarks/unet_engines.py --threads 2        # SD1.5 size, minutes (the OpenVINO export and int8 builds)
python benchmarks/unet_engines.py --smoke --out DIR  # tiny U-Net, seconds (the tests); never writes results/

Results: benchmarks/results/unet_engines.{md,json}, with the machine, the command and the date.

Why a separate benchmark from sample_cpu.py: that one times whole images through sample.py, a few steps
per variant, one process each. This one isolates the part the engine changes, the U-Net call, and times
it 1 + N times per engine in one process on the same inputs, so the ratios are of one run. Each engine
runs the guided pair two ways: as one batch-2 call (diffusers' CFG batch) and as two batch-1 calls. Which
is faster depends on the runtime and the CPU, and the engine can run either (`engine.guided_batch`).

The U-Net (random weights, SD1.5's config in benchmarks/sd15_config/) goes through the project's own
conversion and quantization code (ldm/generation/openvino/export.py), so these are the models
`engine.backend=openvino` builds. Engines:
  torch-fp32                 the U-Net as sample.py runs it with dtype=fp32 (the reference for the error)
  torch-bf16                 torch.autocast bf16 (only on a CPU with a bf16 unit; elsewhere it is emulated)
  openvino-f32 / -bf16       the IR at INFERENCE_PRECISION_HINT f32 (and bf16 on a CPU with a bf16 unit)
  openvino-int8-weights      nncf.compress_weights (int8 weights, float activations)
  openvino-int8              nncf.quantize, weights and activations, calibrated on --calibration random
                             inputs (speed does not depend on the calibration data; quality does, and
                             is not measured here: the weights are random)
The error column is the relative L2 distance of the noise prediction to torch fp32's on the same inputs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import default_cache_dir, ensure_random_sd15, machine_line, median_time, print_and_write, table
from benchmarks.precision_cpu import TINY_UNET  # --smoke: the same tiny U-Net
from ldm.hardware import cpu_has_native_bf16


def load_unet(smoke: bool) -> Any:
    """The U-Net to time: tiny and seeded for --smoke, else SD1.5's from the random-weight folder."""
    from diffusers import UNet2DConditionModel

    if smoke:
        torch.manual_seed(0)
        return UNet2DConditionModel(in_channels=4, out_channels=4, **TINY_UNET).eval().requires_grad_(False)
    folder = ensure_random_sd15(default_cache_dir() / "sd15-random")
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval().requires_grad_(False)


def unet_inputs(unet: Any, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A guided pair's inputs: latents (2, 4, h, w), one timestep, context (2, 77, D)."""
    g = torch.Generator().manual_seed(seed)
    side, c, d = unet.config.sample_size, unet.config.in_channels, unet.config.cross_attention_dim
    sample = torch.randn(2, c, side, side, generator=g)
    timestep = torch.tensor([float(torch.randint(1, 1000, (1,), generator=g))])
    context = torch.randn(2, 77, d, generator=g)
    return sample.numpy(), timestep.numpy(), context.numpy()


Call = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def split(call: Call) -> Call:
    """The guided pair as two batch-1 calls (what `engine.guided_batch=split` runs)."""
    return lambda s, t, c: np.concatenate([call(s[i : i + 1], t, c[i : i + 1]) for i in range(2)])


def torch_call(unet: Any, bf16: bool) -> Call:
    def call(s: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(c), return_dict=False)[0]
        return out.float().numpy()

    return call


def time_engine(name: str, call: Call, inputs: tuple, reference: np.ndarray | None, repeats: int) -> dict[str, Any]:
    """Median s of the guided pair both ways (the first call of each way is the untimed warm-up)."""
    pair_s, pair_all = median_time(lambda: call(*inputs), repeats)
    split_s, split_all = median_time(lambda: split(call)(*inputs), repeats)
    out = call(*inputs)
    error = 0.0 if reference is None else float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
    print(f"  {name}: batch 2 {pair_s:.2f} s, 2 x batch 1 {split_s:.2f} s, error {error:.4f}", file=sys.stderr)
    return {"engine": name, "batch2_s": pair_s, "split_s": split_s, "batch2_all": pair_all,
            "split_all": split_all, "rel_error": error, "_out": out}  # fmt: skip


def measure(smoke: bool, repeats: int, calibration: int, threads: int) -> dict[str, Any]:
    """Every engine's figures, as plain numbers (the JSON file)."""
    from ldm.generation.engine import engine_properties
    from ldm.generation.openvino import export
    from ldm.generation.openvino.runtime import CompiledByShape

    native_bf16 = cpu_has_native_bf16()
    unet = load_unet(smoke)
    inputs = unet_inputs(unet, seed=0)
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    print("torch", file=sys.stderr)
    results.append(time_engine("torch-fp32", torch_call(unet, False), inputs, None, repeats))
    reference = results[0]["_out"]
    if native_bf16:
        results.append(time_engine("torch-bf16", torch_call(unet, True), inputs, reference, repeats))
    else:
        skipped.append("torch-bf16 (no bf16 unit: emulated, many times slower; benchmarks/precision_cpu.py)")

    import openvino as ov

    start = time.perf_counter()
    ir = export.convert_unet(unet)
    convert_s = time.perf_counter() - start
    calibration_inputs = [unet_inputs(unet, seed=1 + i) for i in range(calibration)]
    del unet
    gc.collect()
    core = ov.Core()
    precisions = ["f32", "bf16"] if native_bf16 else ["f32"]
    if not native_bf16:
        skipped.append("openvino-bf16 (no bf16 unit)")
    float_precision = precisions[-1]  # the int8 models' float parts run at the CPU's best precision
    builds: list[tuple[str, str, Any, float]] = [(f"openvino-{p}", p, ir, 0.0) for p in precisions]

    def built(name: str, build: Callable[[], Any]) -> None:
        start = time.perf_counter()
        print(f"building {name}", file=sys.stderr)
        builds.append((name, float_precision, build(), time.perf_counter() - start))

    built("openvino-int8-weights", lambda: export.compress_weights(ir.clone()))
    built("openvino-int8", lambda: export.quantize_unet(ir.clone(), calibration_inputs))
    for name, precision, model, build_s in builds:
        compiled = CompiledByShape(core, model, engine_properties(precision, threads), name)
        start = time.perf_counter()
        compiled.compile(tuple(a.shape for a in inputs))  # one copy serves batch 2 and batch 1
        compile_s = time.perf_counter() - start
        label = name if name.endswith(precision) else f"{name} ({precision})"
        row = time_engine(label, compiled, inputs, reference, repeats)
        row.update(build_s=build_s, compile_s=compile_s)
        results.append(row)
        del compiled
        gc.collect()
    for row in results:
        row.pop("_out")
    return {"smoke": smoke, "threads": threads, "repeats": repeats, "calibration_samples": calibration,
            "native_bf16": native_bf16, "convert_s": convert_s, "openvino": ov.get_version().split("-")[0],
            "shape": [list(a.shape) for a in inputs], "engines": results, "skipped": skipped}  # fmt: skip


def report(data: dict[str, Any]) -> str:
    """The markdown the script prints and writes."""
    base = data["engines"][0]["batch2_s"]
    rows = []
    for e in data["engines"]:
        best = min(e["batch2_s"], e["split_s"])
        way = "batch 2" if e["batch2_s"] <= e["split_s"] else "2 x batch 1"
        times = [round(e["batch2_s"], 2), round(e["split_s"], 2), way, f"{base / best:.2f}x"]
        costs = [f"{e['rel_error']:.4f}", f"{e.get('build_s', 0):.0f}", f"{e.get('compile_s', 0):.1f}"]
        rows.append([e["engine"], *times, *costs])
    shape = data["shape"]
    lines = [
        "## unet_engines: one guided U-Net call (the CFG pair) per engine",
        "",
        f"sample {shape[0]}, timestep {shape[1]}, context {shape[2]}; {data['threads']} threads; median of "
        f"{data['repeats']} after a warm-up; OpenVINO {data['openvino']}; torch -> IR conversion "
        f"{data['convert_s']:.0f} s (once per base)",
        "",
        table(
            [
                "engine",
                "batch 2 s",
                "2 x batch 1 s",
                "faster way",
                "best vs torch fp32 batch 2",
                "rel. error",
                "build s",
                "compile s",
            ],
            rows,
        ),
        "",
        f"int8 calibration: {data['calibration_samples']} random inputs (speed only; random weights say nothing "
        "about int8 quality). Not run here: " + ("; ".join(data["skipped"]) or "none") + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny U-Net, seconds; writes to --out or a temp dir")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per way (default 3; smoke 2)")
    parser.add_argument("--calibration", type=int, default=3, help="random calibration inputs for int8")
    parser.add_argument("--out", type=Path, default=None, help="folder for unet_engines.{md,json}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), file=sys.stderr)
    data = measure(args.smoke, args.repeats or (2 if args.smoke else 3), args.calibration, torch.get_num_threads())
    print_and_write("unet_engines", report(data), data, out_dir=args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
