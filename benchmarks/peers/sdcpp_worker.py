"""One stable-diffusion.cpp render, in the peer's own venv (stable-diffusion-cpp-python and stdlib only).

.cache/peers/sdcpp/bin/python benchmarks/peers/sdcpp_worker.py --model M.safetensors --wtype f16 --steps 20

Prints one JSON line last: load seconds (reading the single file, converting to `wtype`), the render's
seconds, each sampling step's seconds (one guided U-Net call: cond and uncond), peak RSS and the image's
pixel statistics (a blank or NaN image is a failed load, not a fast one).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import time

from stable_diffusion_cpp import StableDiffusion


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--wtype", default="f16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--threads", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

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
    image = images[0].convert("RGB")
    if args.out:
        image.save(args.out)
    pixels = list(image.getdata())
    flat = [c for p in pixels for c in p]
    # the sampling callbacks come first; the step intervals (from the first callback on) are steps 2..N
    steps = [b - a for a, b in itertools.pairwise(marks)][: args.steps - 1]
    print(
        json.dumps(
            {
                "load_s": load_s,
                "image_s": image_s,
                "step_s": steps,
                "callbacks": len(marks),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
                "size": list(image.size),
                "pixel_mean": statistics.fmean(flat),
                "pixel_std": statistics.pstdev(flat),
            }
        )
    )


if __name__ == "__main__":
    main()
