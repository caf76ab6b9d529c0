"""One diffusers render, in this project's venv: `StableDiffusionPipeline.from_pretrained` at fp32, DPM++ 2M.

python benchmarks/peers/diffusers_worker.py --model .cache/sd15-random --steps 20 --threads 2

What a diffusers user writes: the folder loaded as it is (fp32, no attention slicing), its scheduler
config made a `DPMSolverMultistepScheduler` (DPM++ 2M, as sample.py's `scheduler: dpm++` does), every step
guided. Prints one JSON line last (`benchmarks/worker_report.py`): load seconds, the render's seconds, each
step's seconds (one guided U-Net call, batch 2), peak RSS and the image's pixel statistics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.worker_report import emit, render_diffusers, result, step_intervals, worker_parser


def parser() -> argparse.ArgumentParser:
    return worker_parser("one diffusers render (fp32, DPM++ 2M) of a diffusers folder")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    load_s = time.perf_counter() - start
    image, image_s, marks = render_diffusers(pipe, args)  # the pipeline runs under torch.no_grad itself
    settings = f"dpm++ x{args.steps}, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads"
    emit(result(image, image_s, step_intervals(marks, args.steps), load_s, args, settings=settings))


if __name__ == "__main__":
    main()
