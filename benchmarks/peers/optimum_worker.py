"""One optimum-intel render (OpenVINO), in the peer's own venv (.cache/peers/optimum, benchmarks/peers/optimum.txt).

.cache/peers/optimum/bin/python benchmarks/peers/optimum_worker.py --model .cache/sd15-random \
    --ir .cache/peers/optimum-ir/sd15-random --convert-only            # the one-off conversion, its own process
.cache/peers/optimum/bin/python benchmarks/peers/optimum_worker.py --model .cache/sd15-random \
    --ir .cache/peers/optimum-ir/sd15-random --shapes static --steps 20 --threads 2

What optimum-intel's documentation shows: `OVStableDiffusionPipeline.from_pretrained(folder, export=True,
compile=False)` converts the diffusers folder to OpenVINO IR (saved once under `--ir` with `save_pretrained`,
so later runs load the IR); the scheduler becomes DPM++ 2M (`DPMSolverMultistepScheduler` from the folder's
scheduler config); `--shapes static` calls `pipe.reshape(batch_size=1, height=S, width=S,
num_images_per_prompt=1)` before `pipe.compile()` (the U-Net then takes batch 2, the guided pair), `dynamic`
compiles the dynamic-shape IR as loaded. OpenVINO's CPU plugin picks its own inference precision (bf16 on a
CPU with a bf16 unit, f32 elsewhere); `settings` says which it ran.

`--convert-only` prints `{"convert_s": seconds, or null when the IR was there}`; a render prints one JSON line
last (`benchmarks/worker_report.py`) with `compile_s` besides the common fields.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.worker_report import emit, render_diffusers, result, step_intervals, worker_parser


def parser() -> argparse.ArgumentParser:
    parser = worker_parser("one optimum-intel (OpenVINO) render of a diffusers folder")
    parser.add_argument("--ir", required=True, help="the converted IR's folder (written once from --model)")
    parser.add_argument("--shapes", choices=["static", "dynamic"], default="static")
    parser.add_argument("--convert-only", action="store_true", help="convert --model into --ir if missing, then stop")
    return parser


def ov_config(args: argparse.Namespace) -> dict[str, str]:
    """OpenVINO's compile options: the thread count where one is given, else the plugin's defaults."""
    return {"INFERENCE_NUM_THREADS": str(args.threads)} if args.threads > 0 else {}


def reshape_arguments(args: argparse.Namespace) -> dict[str, int] | None:
    """`pipe.reshape`'s arguments for static shapes (one image, guided), None for dynamic ones."""
    if args.shapes == "dynamic":
        return None
    return {"batch_size": 1, "height": args.size, "width": args.size, "num_images_per_prompt": 1}


def convert(args: argparse.Namespace) -> float | None:
    """The IR under `--ir`, converted from `--model` if missing (into a temp folder, then renamed): its seconds."""
    ir = Path(args.ir)
    if (ir / "model_index.json").is_file():
        return None
    from optimum.intel import OVStableDiffusionPipeline

    ir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{ir.name}-", dir=ir.parent))
    try:
        pipe = OVStableDiffusionPipeline.from_pretrained(args.model, export=True, compile=False)
        pipe.save_pretrained(tmp)
        os.replace(tmp, ir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.convert_only:
        emit({"convert_s": convert(args)})
        return
    if not (Path(args.ir) / "model_index.json").is_file():
        raise SystemExit(f"no converted IR in {args.ir}: run with --convert-only first")
    import torch
    from diffusers import DPMSolverMultistepScheduler
    from optimum.intel import OVStableDiffusionPipeline

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(args.ir, export=False, compile=False, ov_config=ov_config(args))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    shapes = reshape_arguments(args)
    if shapes is not None:
        pipe.reshape(**shapes)
    pipe.compile()
    compile_s = time.perf_counter() - start
    image, image_s, marks = render_diffusers(pipe, args)
    try:  # an OpenVINO element type (f32, bf16)
        precision = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # a property or method this OpenVINO version does not have: the row says so instead
        precision = "precision not reported"
    settings = f"dpm++ x{args.steps}, OpenVINO {precision}, {args.shapes} shapes"
    emit(
        result(image, image_s, step_intervals(marks, args.steps), load_s, args, compile_s=compile_s, settings=settings)
    )


if __name__ == "__main__":
    main()
