"""Training-step benchmark: the naive loop (VAE encode every step) vs `data.cache_latents=true`.

python benchmarks/train_step.py --quick          # 256 px, batch 1, the project's default precision
python benchmarks/train_step.py                  # 256 px and 512 px, 32-true and (on bf16 CPUs) bf16-mixed
python benchmarks/train_step.py --smoke          # tiny random model, seconds (CI); writes to --out or a temp dir
python benchmarks/train_step.py --resolution 256 512 --batch 2 --precision 32-true --threads 1

The table goes to benchmarks/results/<--name>.{md,json} (default train_step) with the machine, the command
and the date (`benchmarks.common.write_results`); `--out DIR` writes there instead.

Both loops are `train.py` itself (`ldm.training.train` on conf/train.yaml) on SD1.5-size components with
random weights (benchmarks/sd15_config/) and a generated captioned set in Flickr8k layout, one process per
loop (peak RSS is its own): `naive` has data.cache_latents=false, so every step decodes the JPEG and runs
the frozen VAE's encoder, as peer scripts do; `ours` reads the latent moments from the cache, which the
module fills with its own VAE when fit starts (that one-off cost is shown apart, and a second run reuses
it). A step is the time between consecutive `on_train_batch_end`s (data loading, forward, backward,
optimizer), median after the first. A probe checks, at every optimizer step, that every text-encoder
tensor has a non-zero gradient and no U-Net or VAE tensor has one (its own time is taken out of the step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    compose_project_config,
    default_cache_dir,
    ensure_random_sd15,
    machine_line,
    peak_rss_gib,
    run_json_subprocess,
    table,
    write_results,
)

LOOPS = {"naive": "false", "ours": "true"}


class StepProbe(L.Callback):
    """Step timestamps and the gradient check (injected with `+callbacks.step_probe._target_=...`)."""

    def __init__(self) -> None:
        self.fit_start = 0.0
        self.batch_ends: list[float] = []
        self.first_batch = 0.0
        self.text_tensors = 0
        self.with_grad: list[int] = []
        self.frozen_with_grad: list[int] = []
        self.probe_s = 0.0  # time spent checking gradients: not part of a training step
        self.probe_at_ends: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()  # before the module's on_fit_start fills the latent cache

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.first_batch = self.first_batch or time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batch_ends.append(time.perf_counter())
        self.probe_at_ends.append(self.probe_s)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        start = time.perf_counter()
        text = list(pl_module.text_encoder.parameters())
        self.text_tensors = len(text)
        self.with_grad.append(sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in text))
        frozen = [*pl_module.unet.parameters(), *pl_module.vae.parameters()]
        self.frozen_with_grad.append(sum(p.grad is not None for p in frozen))
        self.probe_s += time.perf_counter() - start

    def step_times(self) -> list[float]:
        """Seconds between consecutive batch ends, without the probe's own time."""
        ends, probes = self.batch_ends, self.probe_at_ends
        return [(ends[i] - ends[i - 1]) - (probes[i] - probes[i - 1]) for i in range(1, len(ends))]


def run_loop(
    loop: str, model: str, work: Path, resolution: int, batch: int, steps: int, precision: str, smoke: bool
) -> dict[str, Any]:
    """`train(cfg)` for `steps` optimizer steps with the latent cache off (naive) or on (ours)."""
    from ldm.training.run import train

    images = (steps + 1) * batch + 4  # train split (~all but 2 for val/test) outlasts the run: no epoch end timed
    overrides = [
        *(["experiment=tiny"] if smoke else [f"model.pretrained={model}"]),
        f"paths.output_dir={work / f'run-{loop}-{resolution}-{precision}'}",
        f"paths.cache_dir={work / 'cache'}",
        f"data.root={work / f'data-{resolution}'}",
        f"data.generate={{num_images: {images}, image_size: {resolution * 5 // 4}, seed: 0, layout: original}}",
        f"data.resolution={resolution}",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        f"data.cache_latents={LOOPS[loop]}",
        f"data.latent_cache_dir={work / 'latents'}",
        "trainer.accelerator=cpu",
        f"trainer.precision={precision}",
        f"++trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "+trainer.enable_checkpointing=false",  # else Lightning adds its own ModelCheckpoint (1.5 GB for SD1.5)
        "callbacks.model_checkpoint=null",
        "callbacks.export=null",
        "callbacks.sample_images=null",
        "+callbacks.step_probe._target_=benchmarks.train_step.StepProbe",
    ]
    cfg = compose_project_config("train", overrides)
    trainer, _ = train(cfg)
    probe = next(c for c in trainer.callbacks if type(c).__name__ == "StepProbe")  # also when run as __main__
    intervals = probe.step_times()
    warm = intervals[1:] if len(intervals) > 1 else intervals
    return {
        "loop": loop,
        "resolution": resolution,
        "batch": batch,
        "precision": str(trainer.precision),
        "threads": torch.get_num_threads(),
        "step_s": statistics.median(warm),
        "steps_timed": len(warm),
        "before_first_step_s": probe.first_batch - probe.fit_start,
        "text_tensors": probe.text_tensors,
        "min_with_grad": min(probe.with_grad),
        "max_frozen_with_grad": max(probe.frozen_with_grad),
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    parser.add_argument("--model", help="a diffusers folder (default: the random SD1.5 in the cache)")
    parser.add_argument("--resolution", type=int, nargs="+", help="default: 256 (quick) or 256 512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, help="optimizer steps per loop (default 6; quick 5)")
    parser.add_argument("--precision", nargs="+", help="default: the project's (16-mixed, resolved for this CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, help="data, cache and run folders (default: a temp folder)")
    parser.add_argument("--out", type=Path, help="folder for the results (default benchmarks/results/)")
    parser.add_argument("--name", default="train_step", help="results file name, without .md/.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        loop, resolution, precision = args.worker.split(":")
        result = run_loop(loop, args.model, args.work, int(resolution), args.batch, args.steps, precision, False)
        print(json.dumps(result))
        return

    from ldm.hardware import cpu_has_native_bf16
    from ldm.training.precision import resolve_precision

    default_precision = resolve_precision("16-mixed", "cpu")
    if args.smoke:
        resolutions, steps, precisions = args.resolution or [64], args.steps or 3, args.precision or ["32-true"]
        model = ""
    else:
        quick = args.quick
        resolutions = args.resolution or ([256] if quick else [256, 512])
        steps = args.steps or (5 if quick else 6)
        both = ["32-true", "bf16-mixed"] if cpu_has_native_bf16() else ["32-true"]
        precisions = args.precision or ([default_precision] if quick else both)
        model = str(ensure_random_sd15(args.model or default_cache_dir() / "sd15-random"))
    started = time.perf_counter()
    machine = machine_line()
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="ldm-train-step-")
    work = args.work or Path(temp.name)
    results = []
    for resolution in resolutions:
        for precision in precisions:
            for loop in ("naive", "ours"):
                if args.smoke:  # in this process: seconds
                    result = run_loop(loop, model, work, resolution, args.batch, steps, precision, True)
                else:
                    worker = [__file__, "--worker", f"{loop}:{resolution}:{precision}", "--model", model]
                    worker += ["--work", str(work), "--batch", str(args.batch), "--steps", str(steps)]
                    worker += ["--threads", str(args.threads)] if args.threads else []
                    result = run_json_subprocess(worker)
                results.append(result)
                print(f"# {loop} {resolution}px {precision}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if temp is not None:
        temp.cleanup()
    text = report(results, machine, "smoke" if args.smoke else "quick" if args.quick else "default", args.batch)
    print(text)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ldm-train-step-results-")) if args.smoke else None)
    paths = write_results(args.name, text, results, out_dir=out)
    print(f"\nwritten: {', '.join(str(p) for p in paths)}")


def report(results: list[dict[str, Any]], machine: str, mode: str, batch: int) -> str:
    """The markdown the benchmark prints and writes: one row per loop, ratios to the naive loop."""
    rows = []
    naive = {(r["resolution"], r["precision"]): r["step_s"] for r in results if r["loop"] == "naive"}
    for r in results:
        base = naive[(r["resolution"], r["precision"])]
        grads = f"{r['min_with_grad']}/{r['text_tensors']}" + (
            "" if r["max_frozen_with_grad"] == 0 else f" (frozen with grad: {r['max_frozen_with_grad']})"
        )
        rows.append(
            [
                r["loop"] + (" (cached latents)" if r["loop"] == "ours" else " (VAE encode per step)"),
                f"{r['resolution']} px x{r['batch']}",
                r["precision"],
                r["step_s"],
                f"{base / r['step_s']:.2f}x",
                r["before_first_step_s"],
                grads,
                f"{r['peak_rss_gib']:.2f}",
            ]
        )
    headers = ["loop", "images", "precision", "s/step (median)", "vs naive", "fit start -> first step s",
               "text-encoder tensors with grad", "peak RSS GiB"]  # fmt: skip
    return "\n".join(
        [
            f"## train_step ({mode}): text-encoder step, SD1.5-size, batch {batch}, CPU",
            f"machine: {machine}",
            "",
            table(headers, rows),
            "",
            "(fit start -> first step: model setup, and for `ours` filling the latent cache for every image once; "
            "no U-Net or VAE tensor got a gradient unless said)",
        ]
    )


if __name__ == "__main__":
    main()
