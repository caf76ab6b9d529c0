"""One render on this project's own path (sample.py's `load_for_inference` + `generate`), in this venv.

python benchmarks/peers/ours_worker.py --model .cache/sd15-random --settings equal-work --steps 20 --threads 2

The code is benchmarks/sample_cpu.py's `run_ours`, with its variants' settings:
  equal-work  sample_cpu's `ours-full`: every step guided (`guidance_interval=[0.0,1.0]`), no DeepCache, so the
              U-Net does the same work as diffusers' plain CFG; the engine is `engine.backend`'s default (auto)
  default     sample_cpu's `ours`: sample.py's defaults as they are (the guidance interval [0.2, 0.8]: the steps
              outside it run one conditional batch-1 pass)
Both at the peers' steps, size, guidance and prompt, with DPM-Solver++ (2M; sample.py's default solver) named
explicitly. Prints one JSON line last (`benchmarks/worker_report.py`); `step_s` holds the guided steps after
the first guided one, `cond_step_s` the unguided ones, `export_s` the OpenVINO engine's one-off build when this
run made it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.worker_report import emit, result, worker_parser

SETTINGS = {"equal-work": "ours-full", "default": "ours"}  # --settings -> benchmarks/sample_cpu.py's variant


def parser() -> argparse.ArgumentParser:
    parser = worker_parser("one render with sample.py's generation path")
    parser.add_argument("--settings", choices=sorted(SETTINGS), required=True)
    return parser


def overrides(args: argparse.Namespace) -> list[str]:
    """sample.py overrides: the variant's own, then the peers' common settings."""
    from benchmarks.sample_cpu import VARIANTS

    common = [f"steps={args.steps}", f"height={args.size}", f"width={args.size}"]
    return [*VARIANTS[SETTINGS[args.settings]], *common, f"guidance_scale={args.guidance}", "scheduler=dpm++"]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from benchmarks.sample_cpu import run_ours

    variant = SETTINGS[args.settings]
    threads = args.threads if args.threads > 0 else None
    summary = run_ours(args.model, overrides(args), None, threads, variant, prompt=args.prompt)
    kinds, times = summary["kinds"], summary["step_times"]
    guided = [t for t, kind in zip(times, kinds, strict=True) if kind == "full"][1:]  # after the first: warm
    cond = [t for t, kind in zip(times, kinds, strict=True) if kind == "full-cond"]
    settings = ", ".join(x for x in (summary["solver"], summary["precision"], summary["notes"]) if x)
    if cond:
        settings += f"; unguided step {statistics.median(cond):.2f} s"
    emit(
        result(
            summary["_image"], summary["image_s"], guided, summary["load_s"], args,
            cond_step_s=cond, export_s=summary["export_s"] or None, kinds=kinds, settings=settings,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
