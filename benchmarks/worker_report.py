"""What a benchmark worker measures and prints, with the standard library only (Pillow and torch imported late).

Why a module of its own: the peers' workers (`benchmarks/peers/*_worker.py`) run in venvs that have none of
this project's packages (stable-diffusion.cpp's, optimum-intel's), and every worker must report the same
fields measured the same way; `benchmarks/common.py` takes its peak RSS from here too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
from collections.abc import Sequence
from typing import Any

GIB = 2**30
PROMPT = "a photograph of an astronaut riding a horse"


def peak_rss_gib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def pixel_stats(image: Any) -> dict[str, Any]:
    """Size, mean and (population) standard deviation over every RGB value: a blank or NaN image has std 0."""
    from PIL import ImageStat

    stat = ImageStat.Stat(image.convert("RGB"))
    count = sum(stat.count)
    mean = sum(stat.sum) / count
    return {
        "size": list(image.size),
        "pixel_mean": mean,
        "pixel_std": max(sum(stat.sum2) / count - mean**2, 0.0) ** 0.5,
    }


def step_intervals(marks: Sequence[float], steps: int) -> list[float]:
    """Seconds between consecutive step-end marks: steps 2..N (the first step has no mark before it)."""
    return [b - a for a, b in itertools.pairwise(marks)][: steps - 1]


def worker_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every peer's worker takes (benchmarks/peers.py passes the same ones to each)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="what the peer loads (a diffusers folder or a single file)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--threads", type=int, default=-1, help="-1: the library's own choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--out", default="", help="save the image here (PNG)")
    return parser


def render_diffusers(pipe: Any, args: argparse.Namespace) -> tuple[Any, float, list[float]]:
    """One image from a diffusers-style pipeline (diffusers' own or optimum-intel's): it, its seconds, step ends."""
    import torch

    marks: list[float] = []

    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        marks.append(time.perf_counter())
        return kwargs

    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    image = pipe(
        args.prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.size,
        width=args.size,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        callback_on_step_end=on_step,
    ).images[0]
    return image, time.perf_counter() - start, marks


def result(
    image: Any, image_s: float, step_s: Sequence[float], load_s: float, args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    """The fields benchmarks/peers.py reads (`extra`: a peer's one-off seconds and settings); saves the image."""
    if args.out:
        image.save(args.out)
    return {
        "load_s": load_s,
        "image_s": image_s,
        "step_s": list(step_s),
        "peak_rss_gib": peak_rss_gib(),
        **pixel_stats(image),
        **extra,
    }


def emit(fields: dict[str, Any]) -> None:
    """Print the result as one JSON line, last (what `run_json_subprocess` reads)."""
    print(json.dumps(fields), flush=True)
