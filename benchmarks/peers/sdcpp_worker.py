"""One stable-diffusion.cpp render, in the peer's own venv (stable-diffusion-cpp-python and stdlib only).

.cache/peers/sdcpp/bin/python benchmarks/peers/sdcpp_worker.py --model M.safetensors --wtype f16 --steps 20

Prints one JSON line last (`benchmarks/worker_report.py`): load seconds (reading the single file, converting
to `wtype`), the render's seconds, each sampling step's seconds (one guided U-Net call: cond and uncond), peak
RSS and the image's pixel statistics (a blank or NaN image is a failed load, not a fast one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.worker_report, without our venv

from benchmarks.worker_report import emit, result, step_intervals, worker_parser


def parser() -> argparse.ArgumentParser:
    parser = worker_parser("one stable-diffusion.cpp render of train.py's single-file export")
    parser.add_argument("--wtype", default="f16")
    parser.add_argument("--sampler", default="dpm++2m")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from stable_diffusion_cpp import StableDiffusion

    start = time.perf_counter()
    sd = StableDiffusion(model_path=args.model, wtype=args.wtype, n_threads=args.threads, verbose=False)
    load_s = time.perf_counter() - start

    marks: list[float] = []
    start = time.perf_counter()
    images = sd.generate_image(
        prompt=args.prompt,
        width=args.size,
        height=args.size,
        cfg_scale=args.guidance,
        sample_method=args.sampler,
        sample_steps=args.steps,
        seed=args.seed,
        progress_callback=lambda step, steps, t: marks.append(time.perf_counter()),
    )
    image_s = time.perf_counter() - start
    # the sampling callbacks come first; the step intervals (from the first callback on) are steps 2..N
    settings = f"{args.sampler} x{args.steps}, {args.wtype}"
    emit(
        result(
            images[0].convert("RGB"), image_s, step_intervals(marks, args.steps), load_s, args,
            callbacks=len(marks), settings=settings,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
