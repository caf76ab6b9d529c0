"""The int8 build of `engine.quantize=int8`: its peak RSS and wall time, per calibration setting.

python benchmarks/int8_build.py --threads 2                               # SD1.5 size (minutes per setting)
python benchmarks/int8_build.py --threads 2 --samples all 15 5 --prompts 1 --steps 15
python benchmarks/int8_build.py --smoke --out DIR                         # tiny model, seconds (the tests)

Results: benchmarks/results/int8_build.{md,json} (`--name` picks another name), with the machine, the
command and the date.

Why one process per setting: peak RSS is per process, and a build's is what decides whether a machine
can build int8 at all. Each setting's process builds the int8 entry from nothing (its entry is deleted
first) in the benchmark's own engine cache (`.cache/openvino-int8-build`), through the project's own
path (`load_for_inference` with engine.backend=openvino engine.quantize=int8, SD1.5-size random weights),
so its figures are what a user's first int8 run costs, model load included. The float entry it
calibrates with is built before them in a process of its own, or linked from `--float-from` (the engine
cache sample.py uses) where one is there already.

A sampler thread reads the process's RSS every 0.1 s and attributes it to the phase running: calibration
(the float engine rendering the calibration prompts, `ldm.generation.openvino.calibration`), nncf's
quantization of the U-Net, nncf's weight compression of the VAE decoder, saving, and everything else
(loading the model, fingerprinting it, compiling). `--samples` sets `engine.calibration.samples`: `all`
(the default, every U-Net call of the calibration renders) or N of them spread evenly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    GIB,
    compose_project_config,
    default_cache_dir,
    ensure_random_sd15,
    machine_line,
    print_and_write,
    run_json_subprocess,
    table,
)

SCRIPT = "benchmarks/int8_build.py"
OTHER = "load, fingerprint, compile"


class Phases:
    """The phase running now, each phase's seconds and the highest RSS sampled while it ran."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.now, self.seconds, self.peak = OTHER, {OTHER: 0.0}, {OTHER: 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.wait(self.interval):
            rss = self.process.memory_info().rss
            self.peak[self.now] = max(self.peak.get(self.now, 0), rss)

    @contextmanager
    def enter(self, label: str) -> Iterator[None]:
        before, start = self.now, time.perf_counter()
        self.now = label
        try:
            yield
        finally:
            self.peak[label] = max(self.peak.get(label, 0), self.process.memory_info().rss)
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
            self.now = before

    def wrap(self, module: Any, name: str, label: str) -> None:
        """Run `module.name` under `label` from now on (the engine looks these up at call time)."""
        real = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.enter(label):
                return real(*args, **kwargs)

        setattr(module, name, wrapped)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def compose(
    model: str, cache: Path, threads: int | None, prompts: list[str], steps: int, samples: str, backend: str
) -> Any:
    """sample.py's config for this build (`backend`: torch to load, openvino to build the float entry, int8)."""
    engine = ["engine.backend=openvino", "engine.quantize=int8"] if backend == "int8" else [f"engine.backend={backend}"]
    overrides = [f"model.pretrained={model}", f"engine.cache_dir={cache}", *engine,
                 f"engine.calibration.steps={steps}", "engine.calibration_prompts=[" + ",".join(
                     json.dumps(p) for p in prompts) + "]",
                 f"engine.calibration.samples={'null' if samples == 'all' else int(samples)}"]  # fmt: skip
    return compose_project_config("sample", overrides + ([f"threads={threads}"] if threads else []))


def link_float_entry(model: Any, cfg: Any, b: Any, float_from: Path | None) -> str:
    """Hard-link (or copy) the float entry from `float_from` where it is complete there and missing here."""
    from ldm.generation.openvino import build, cache

    target = build.float_folder(b)
    if float_from is None or cache.check_entry(target, b.expected(None), files=False) is None:
        return "none"
    source = float_from / target.relative_to(Path(cfg.engine.cache_dir))
    if cache.check_entry(source, b.expected(None)) is not None:
        return "none"

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)
    return str(source)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One process: the float entry (`--worker float`) or one int8 build from nothing (`--worker int8`)."""
    from ldm.generation.loading import load_for_inference
    from ldm.generation.openvino import cache, calibration, export

    built: dict[str, float] = {}
    ensure = cache.ensure_entry

    def timed_ensure(folder: Path, expected: dict, build_fn: Callable, what: str) -> tuple[Path, float | None]:
        folder_out, seconds = ensure(folder, expected, build_fn, what)
        built[what] = seconds or 0.0
        return folder_out, seconds

    cache.ensure_entry = timed_ensure
    prompts, cache_dir = args.calibration_prompts, Path(args.cache_dir)
    if args.worker == "float":
        from ldm.generation.engine import build_openvino
        from ldm.generation.openvino.build import EngineBuild

        cfg = compose(args.model, cache_dir, args.threads, prompts, args.steps, "all", "torch")
        model = load_for_inference(cfg, base_override=True)
        b = EngineBuild.start(model, cfg)
        linked = link_float_entry(model, cfg, b, args.float_from)
        start = time.perf_counter()
        build_openvino(model, cfg, None, b)  # the float entry: a hit, or the export
        return {"linked_from": linked, "load_s": time.perf_counter() - start, "built_s": built}
    cfg = compose(args.model, cache_dir, args.threads, prompts, args.steps, args.setting, "int8")
    for old in cache_dir.glob("*/ov*-int8-*"):
        shutil.rmtree(old)  # every setting builds from nothing (the benchmark's own cache)
    phases = Phases()
    counts: dict[str, int] = {}
    spread = calibration.spread

    def counted(samples: list, count: int | None) -> list:
        kept = spread(samples, count)
        counts.update(calls=len(samples), kept=len(kept))
        return kept

    calibration.spread = counted
    phases.wrap(calibration, "calibration_samples", "calibration renders")
    phases.wrap(export, "quantize_unet", "nncf quantize (U-Net)")
    phases.wrap(export, "compress_weights", "nncf weights (VAE decoder)")
    phases.wrap(export, "save", "save")
    start = time.perf_counter()
    load_for_inference(cfg, base_override=True)
    load_s = time.perf_counter() - start
    phases.close()
    phases.seconds[OTHER] = load_s - sum(s for label, s in phases.seconds.items() if label != OTHER)
    return {
        "setting": args.setting, **counts, "load_s": load_s, "build_s": built.get("int8 U-Net and VAE", 0.0),
        "phase_s": phases.seconds, "phase_peak_gib": {k: v / GIB for k, v in phases.peak.items()},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }  # fmt: skip


def report(data: dict[str, Any]) -> str:
    """The markdown the script prints and writes."""
    phases = list(dict.fromkeys(p for row in data["builds"] for p in row["phase_s"]))
    rows = []
    for row in data["builds"]:
        per_phase = [f"{row['phase_s'].get(p, 0):.0f} s, {row['phase_peak_gib'].get(p, 0):.2f} GiB" for p in phases]
        rows.append([row["setting"], f"{row.get('kept', '?')} of {row.get('calls', '?')}", f"{row['build_s']:.0f}",
                     f"{row['load_s']:.0f}", f"{row['peak_rss_gib']:.2f}", *per_phase])  # fmt: skip
    f = data["float"]
    if f["linked_from"] != "none":
        float_line = f"linked from {f['linked_from']}"
    else:
        float_line = f"built in {sum(f['built_s'].values()):.0f} s" if any(f["built_s"].values()) else "already built"
    headers = ["samples", "kept of calls", "int8 build s", "process load s", "peak RSS GiB"]
    lines = [
        "## int8_build: the int8 engine's build (calibration + nncf) per `engine.calibration.samples`",
        "",
        f"model {data['model']}; calibration: {len(data['prompts'])} prompt(s) x {data['steps']} steps, every "
        f"step guided; {data['threads']} threads; each setting in its own process, built from nothing (the "
        f"float entry {float_line})",
        "",
        table([*headers, *(f"{p} (s, peak RSS)" for p in phases)], rows),
        "",
        "peak RSS: the process's (getrusage), model load included; per phase: the highest RSS sampled every "
        "0.1 s while it ran. samples `all` is today's default (every U-Net call of the calibration renders).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, seconds; writes to --out or a temp dir")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--samples", nargs="+", default=None, help="engine.calibration.samples values (default: all)")
    parser.add_argument("--prompts", type=int, default=None, help="the first N of engine.calibration_prompts")
    parser.add_argument("--steps", type=int, default=None, help="engine.calibration.steps (default 15; smoke 2)")
    parser.add_argument("--model", type=Path, default=None, help="a diffusers folder (default: SD1.5-size random)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the benchmark's own engine cache")
    parser.add_argument("--float-from", type=Path, default=None, help="link the float entry from this engine cache")
    parser.add_argument("--out", type=Path, default=None, help="folder for int8_build.{md,json}")
    parser.add_argument("--name", default="int8_build")
    parser.add_argument("--worker", choices=["float", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--calibration-prompts", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.smoke:
        from ldm.tiny import ensure_tiny_pretrained

        model = ensure_tiny_pretrained(default_cache_dir() / "tiny-sd15")
        cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="ldm-int8-build-"))
    else:
        model = str(ensure_random_sd15(args.model or default_cache_dir() / "sd15-random"))
        cache_dir = args.cache_dir or default_cache_dir() / "openvino-int8-build"
    float_from = args.float_from or (None if args.smoke else default_cache_dir() / "openvino")
    steps = args.steps or (2 if args.smoke else 15)
    prompts = list(compose_project_config("sample", []).engine.calibration_prompts)[: args.prompts or None]
    samples = args.samples or (["all", "1"] if args.smoke else ["all"])
    common = ["--model", model, "--cache-dir", str(cache_dir), "--steps", str(steps), "--calibration-prompts",
              *prompts, *(["--threads", str(args.threads)] if args.threads else []),
              *(["--float-from", str(float_from)] if float_from else [])]  # fmt: skip
    print(machine_line(), file=sys.stderr)
    print("float entry ...", file=sys.stderr)
    float_row = run_json_subprocess([SCRIPT, "--worker", "float", *common])
    builds = []
    for setting in samples:
        print(f"int8 build, engine.calibration.samples={setting} ...", file=sys.stderr)
        builds.append(run_json_subprocess([SCRIPT, "--worker", "int8", "--setting", setting, *common]))
        print(f"  {builds[-1]['build_s']:.0f} s, peak RSS {builds[-1]['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    import torch

    data = {"smoke": args.smoke, "model": "tiny" if args.smoke else model, "prompts": prompts, "steps": steps,
            "threads": args.threads or torch.get_num_threads(), "float": float_row, "builds": builds}  # fmt: skip
    print_and_write(args.name, report(data), data, out_dir=args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
