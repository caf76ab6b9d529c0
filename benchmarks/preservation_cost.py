"""What preservation adds to a stage-3 training step of the shapes world (the issue's bound: ≤ 15%).

python benchmarks/preservation_cost.py                   # the cached shapes world (`make demo` builds it)
python benchmarks/preservation_cost.py --steps 30 --threads 2
python benchmarks/preservation_cost.py --smoke           # tests: the tiny model, a few steps, a temp folder

One process builds the mission's module and a batch exactly as `python train.py experiment=shapes` does, then
times the step's compute (noise-prediction forward through the frozen U-Net, backward into the text encoder,
AdamW) with preservation off and on, alternating the two so load on the machine hits both alike. It
reports the median of each and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import compose_project_config, default_cache_dir, module_and_batch, print_and_write, table


def step_fn(module: Any, batch: dict[str, Any], preserve: bool) -> Any:
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        loss = module._common_step(batch)
        if preserve:
            loss = loss + module.preservation.weight * module.preservation.loss(module)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--smoke", action="store_true", help="the tiny model, for tests (results in a temp folder)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    experiment = "tiny" if args.smoke else "shapes"
    cfg = compose_project_config("train", [f"experiment={experiment}", f"paths.cache_dir={args.cache_dir}"])
    if not args.smoke and not (args.cache_dir / "shapes" / "base" / "model_index.json").is_file():
        sys.exit(f"error: no shapes world base model in {args.cache_dir}/shapes/base: run `make demo` first")
    module, batch = module_and_batch(cfg)
    steps = {name: step_fn(module, batch, name == "on") for name in ("off", "on")}
    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.steps):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["on"] / median["off"]
    rows = [
        ["off (preservation.weight=0)", f"{median['off'] * 1000:.1f}", "1.000"],
        [
            f"on (weight {module.preservation.weight:g}, {module.preservation.batch_size} prompts)",
            f"{median['on'] * 1000:.1f}",
            f"{ratio:.3f}",
        ],
    ]
    report = (
        f"experiment={experiment}, batch {len(batch['input_ids'])}, {len(module.preservation.prompts)} preservation "
        f"prompts, {args.steps} timed steps each (alternating), {args.threads} threads\n\n"
        + table(["stage-3 step", "median ms", "ratio to off"], rows)
        + f"\n\npreservation adds {100 * (ratio - 1):.1f}% to a step (bound: 15%)\n"
    )
    data_out = {"median_s": median, "ratio": ratio, "steps": args.steps, "threads": args.threads, "times_s": times}
    print_and_write("preservation_cost", report, data_out, out_dir=args.out_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
