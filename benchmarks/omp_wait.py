"""How OpenMP's idle threads wait (`OMP_WAIT_POLICY`) changes the shapes world's training steps.

python benchmarks/omp_wait.py                     # the cached shapes world (`make demo` builds it), 2 threads
python benchmarks/omp_wait.py --steps 30 --rounds 3
python benchmarks/omp_wait.py --smoke             # tests: the tiny model, a few steps, a temp folder

The world's models are small (a 32/64-channel U-Net on 8x8 latents), so a step is many short kernels and
the threads between them wait often. PASSIVE puts a waiting thread to sleep at once; the OpenMP runtime's
own default spins a while first; ACTIVE always spins. The policy is read once, when OpenMP starts, so each
policy runs in its own worker process (`--worker POLICY`), and the rounds alternate the policies so that
load on the machine hits each alike. A worker times the compute of a stage-2 step (U-Net and text encoder
trained together, `experiment=shapes_base`) and of a stage-3 step (the text encoder through the frozen
U-Net, `experiment=shapes`), each built as train.py builds it. The policy changes no result: the threads
split the same work the same way, and only their waiting differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import (
    compose_project_config,
    default_cache_dir,
    module_and_batch,
    print_and_write,
    run_json_subprocess,
    table,
)

POLICIES = ("default", "PASSIVE", "ACTIVE")  # default: OMP_WAIT_POLICY unset
STAGES = {"stage 2 (base model)": "shapes_base", "stage 3 (mission)": "shapes"}


def timed_steps(experiment: str, overrides: list[str], steps: int) -> list[float]:
    """Seconds of each of `steps` training steps (forward, backward, AdamW) after one warm-up step."""
    module, batch = module_and_batch(compose_project_config("train", [f"experiment={experiment}", *overrides]))
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = module._common_step(batch)
        if module.preservation is not None:
            loss = loss + module.preservation.weight * module.preservation.loss(module)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step allocates and warms the caches
            times.append(time.perf_counter() - start)
    return times


def worker(args: argparse.Namespace) -> None:
    """One policy's process: the policy it was started with and every stage's step times, as one JSON line."""
    torch.set_num_threads(args.threads)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ldm-omp-wait-") as tmp:
        paths = [f"paths.cache_dir={args.cache_dir}", f"paths.output_dir={tmp}"]
        for label, experiment in stages(args.smoke).items():
            overrides = list(paths)
            if experiment == "shapes_base":  # its module writes a fresh starting folder: not into the cache
                overrides.append(f"model.pretrained={tmp}/init")
            out[label] = timed_steps(experiment, overrides, args.steps)
    print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY", "default"), "times": out}))


def stages(smoke: bool) -> dict[str, str]:
    """What a worker times: both stages, or for tests the tiny preset once."""
    return {"tiny": "tiny"} if smoke else STAGES


def report(times: dict[str, dict[str, list[float]]], threads: int, steps: int, rounds: int) -> tuple[str, dict]:
    """Median step per (policy, stage) and its ratio to the runtime's default, measured in the same run."""
    median = {p: {s: statistics.median(v) for s, v in by_stage.items()} for p, by_stage in times.items()}
    names = list(next(iter(times.values())))
    rows = []
    for policy in times:
        cells = []
        for stage in names:
            ms, ratio = 1000 * median[policy][stage], median[policy][stage] / median["default"][stage]
            cells += [f"{ms:.1f}", f"{ratio:.2f}"]
        rows.append([policy if policy != "default" else "unset (the runtime's default)", *cells])
    headers = ["OMP_WAIT_POLICY"]
    for stage in names:
        headers += [f"{stage}: median ms", "ratio to unset"]
    text = (
        f"{rounds} rounds x {steps} timed steps per policy and stage (policies alternate by round), {threads} "
        "threads, batch 64\n\n" + table(headers, rows) + "\n"
    )
    return text, {"median_s": median, "times_s": times, "threads": threads, "steps": steps, "rounds": rounds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per stage, round and policy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--smoke", action="store_true", help="the tiny model, for tests (results in a temp folder)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--worker", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.smoke and not (args.cache_dir / "shapes" / "base" / "model_index.json").is_file():
        sys.exit(f"error: no shapes world base model in {args.cache_dir}/shapes/base: run `make demo` first")
    times: dict[str, dict[str, list[float]]] = {p: {s: [] for s in stages(args.smoke)} for p in POLICIES}
    common = ["--steps", str(args.steps), "--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
    for round_ in range(args.rounds):
        for policy in POLICIES:
            env = {} if policy == "default" else {"OMP_WAIT_POLICY": policy}
            cmd = [__file__, "--worker", policy, *common, *(["--smoke"] if args.smoke else [])]
            got = run_json_subprocess(cmd, env=env, unset=("OMP_WAIT_POLICY",))
            if got["policy"] != policy:  # an inherited variable would time another policy under this name
                sys.exit(f"error: the {policy} worker ran with OMP_WAIT_POLICY={got['policy']}")
            for stage, values in got["times"].items():
                times[policy][stage] += values
            print(f"round {round_ + 1}/{args.rounds} {policy}: done", file=sys.stderr, flush=True)
    text, data = report(times, args.threads, args.steps, args.rounds)
    print_and_write("omp_wait" if not args.smoke else "omp_wait-smoke", text, data, out_dir=args.out_dir,
                    smoke=args.smoke)  # fmt: skip


if __name__ == "__main__":
    main()
