"""Reward fine-tuning and LoRA adapters against stage 3's full fine-tune, on the offline shapes world.

python benchmarks/shapes_methods.py                              # every variant, 360 prompts per vocabulary
python benchmarks/shapes_methods.py --variants stage3 lora-r4    # some of them
python benchmarks/shapes_methods.py --set trainer.max_epochs=3   # any train.py override, every variant
python benchmarks/shapes_methods.py --define rw-lr3e-4=stage3+reward:optimizer.lr=3e-4 \
    --variants stage3 stage3+reward rw-lr3e-4                     # a sweep: variants defined on the command line

Each variant is one `python train.py experiment=...` process after the world's cached stages (VAE, base model,
evaluation judge, reward judge; built by `demo.py` first when missing). Its adherence report renders the same
held-out prompts with one seed each, before and after, and scores every image with both judges: the
evaluation judge (never a reward) and the reward judge (the one `reward=judge` maximises). When the two
disagree, the reward was hacked. Per variant it also records the stage's wall time without the adherence
rendering, the process's peak RSS (os.wait4) and the size of what it writes: final_weights.pt (the trainable
weights, the adapter alone for LoRA) and last.ckpt (those plus AdamW's moments).

The tables go to benchmarks/results/<--name>.{md,json} (default shapes_methods) with machine, command and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import GIB, ROOT, default_cache_dir, machine_line, table, write_results
from ldm.world.vocab import ATTRIBUTES

STAGE3_RUN = "{stage3}"  # replaced by the stage3 variant's run folder of this benchmark run
VARIANTS: dict[str, list[str]] = {  # variant -> train.py overrides
    "stage3": ["experiment=shapes"],
    "reward": ["experiment=shapes_reward"],
    "stage3+reward": ["experiment=shapes_reward", f"model.text_encoder={STAGE3_RUN}/final_model"],
    "lora-r4": ["experiment=shapes_lora"],
    "lora-r16": ["experiment=shapes_lora", "model.adapter.rank=16", "model.adapter.alpha=16"],
    "lora+reward": ["experiment=shapes_lora_reward"],
}
# demo.py's cached stages: the evaluation judge's chain and the reward judge's (as demo.py extras runs them)
CACHED = ("[shapes_vae,shapes_base,shapes_judge]", "[shapes_vae,shapes_base,shapes_reward_judge]")
SHARES = (*ATTRIBUTES, "mean")  # the columns of each adherence table, per vocabulary


def define_variants(definitions: list[str]) -> list[str]:
    """Add `NAME=VARIANT:OVERRIDE,OVERRIDE` variants (VARIANT's overrides, then these); their names, in order.

    Why: a sweep of one method changes a few of its settings, and --set would change every variant's,
    stage 3's included."""
    names = []
    for definition in definitions:
        name, _, rest = definition.partition("=")
        parent, _, overrides = rest.partition(":")
        if not name or parent not in VARIANTS or not overrides or name in VARIANTS:
            sys.exit(
                f"error: --define {definition!r}: expected NAME=VARIANT:OVERRIDE[,OVERRIDE...] with a new NAME and "
                f"VARIANT one of {', '.join(VARIANTS)}"
            )
        VARIANTS[name] = [*VARIANTS[parent], *overrides.split(",")]
        names.append(name)
    return names


def run_measured(args: list[str], log_path: Path) -> tuple[int, float, float]:
    """Run `python ARGS` with output to `log_path`; (exit status, wall s, peak RSS GiB of that process)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    return (
        os.waitstatus_to_exitcode(status),
        time.perf_counter() - start,
        usage.ru_maxrss * 1024 / GIB,
    )  # Linux reports KiB


def ensure_cached_stages(cache_dir: Path, out: Path, common: list[str], demo_set: list[str]) -> None:
    """Build (or find complete) the world's VAE, base model and both judges through demo.py."""
    for i, stages in enumerate(CACHED):
        log = out / f"cached-stages-{i}.log"
        cmd = ["demo.py", f"stages={stages}", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={out}/cached-{i}"]
        code, wall, _ = run_measured([*cmd, f"overrides={json.dumps(common)}", *demo_set], log)
        if code != 0:
            sys.exit(f"error: demo.py {stages} failed (exit {code}); see {log}")
        print(f"cached stages {stages}: ready ({wall:.0f} s)", flush=True)


def file_mib(path: Path) -> float | None:
    return path.stat().st_size / 2**20 if path.is_file() else None


def run_variant(name: str, args: argparse.Namespace, out: Path, runs: dict[str, Path]) -> dict[str, Any]:
    """Train one variant in its own process; its report.json figures plus time, memory and file sizes.

    With --reuse, a variant whose run folder already holds report.json and measured.json (a finished
    variant of an interrupted run of this benchmark) is read back instead of trained again.
    """
    run_dir = out / name.replace("+", "_")
    overrides = [o.replace(STAGE3_RUN, str(runs.get("stage3", ""))) for o in VARIANTS[name]]
    if any(STAGE3_RUN in o for o in VARIANTS[name]) and "stage3" not in runs:
        sys.exit(f"error: variant {name!r} refines stage 3's export: list stage3 before it in --variants")
    cmd = [
        "train.py",
        *overrides,
        f"paths.cache_dir={args.cache_dir}",
        f"hydra.run.dir={run_dir}",
        f"callbacks.adherence.prompts_per_vocabulary={args.prompts}",
        f"++callbacks.adherence.other_judges.reward_judge={args.cache_dir}/shapes/reward_judge",
        "++trainer.enable_progress_bar=false",
        *args.set,
    ]
    measured = run_dir / "measured.json"
    reused = args.reuse and measured.is_file() and (run_dir / "report.json").is_file()
    if reused:
        record = json.loads(measured.read_text())
        wall, rss, note = record["wall_s"], record["peak_rss_gib"], record.get("note")
        print(f"{name}: finished earlier in {run_dir}, read back", flush=True)
    else:
        print(f"{name}: python {' '.join(cmd)}", flush=True)
        code, wall, rss = run_measured(cmd, run_dir.with_suffix(".log"))
        if code != 0:
            sys.exit(f"error: variant {name} failed (exit {code}); see {run_dir.with_suffix('.log')}")
        measured.write_text(json.dumps({"wall_s": wall, "peak_rss_gib": rss}) + "\n")
        note = None
    runs[name] = run_dir
    report = json.loads((run_dir / "report.json").read_text())
    rendering = sum(report["seconds"].values())
    result = {
        "overrides": overrides,
        "run_dir": str(run_dir),
        "read_back": bool(reused),
        "note": note,
        "wall_s": wall,
        "train_s": wall - rendering,
        "adherence_render_s": rendering,
        "peak_rss_gib": rss,
        "final_weights_mib": file_mib(run_dir / "final_model" / "final_weights.safetensors"),
        "last_ckpt_mib": file_mib(run_dir / "checkpoints" / "last.ckpt"),
        "steps": report["stage3"]["steps"],
        "evaluation_judge": report["adherence"],
        "reward_judge": report["adherence_by_other_judge"]["reward_judge"],
    }
    mean = result["evaluation_judge"]["after_stage3"]["new"]["mean"]
    print(f"{name}: new prompts {mean:.1%} (evaluation judge), {wall:.0f} s, {rss:.2f} GiB", flush=True)
    return result


def cell(row: dict[str, Any], key: str) -> str:
    low, high = row["ci95"][key]
    return f"{100 * row[key]:.1f} [{100 * low:.0f}, {100 * high:.0f}]"


def adherence_table(results: dict[str, dict[str, Any]], judge: str) -> str:
    """Rows: the base model (from the first variant's before-pass) and each variant after training."""
    first = next(iter(results.values()))
    rows = [("base model", first[judge]["base_model"])] + [(n, r[judge]["after_stage3"]) for n, r in results.items()]
    headers = ["model"] + [f"new {a}" for a in SHARES] + [f"base {a}" for a in SHARES]
    return table(
        headers,
        [[n, *(cell(s["new"], a) for a in SHARES), *(cell(s["base"], a) for a in SHARES)] for n, s in rows],
    )


def cost_table(results: dict[str, dict[str, Any]]) -> str:
    def mib(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    full = results.get("stage3", {}).get("final_weights_mib")
    rows = []
    for name, r in results.items():
        share = f"{100 * r['final_weights_mib'] / full:.1f}%" if full and r["final_weights_mib"] else "–"
        rows.append(
            [
                name,
                r["steps"],
                f"{r['train_s']:.0f}",
                f"{r['adherence_render_s']:.0f}",
                f"{r['peak_rss_gib']:.2f}",
                mib(r["final_weights_mib"]),
                share,
                mib(r["last_ckpt_mib"]),
            ]
        )
    headers = [
        "variant",
        "steps",
        "train s",
        "adherence render s",
        "peak RSS GiB",
        "final_weights.pt MiB",
        "vs stage3",
        "last.ckpt MiB",
    ]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choices = f"of {', '.join(VARIANTS)} and --define's"
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=choices)
    parser.add_argument(
        "--define", nargs="*", default=[], metavar="NAME=VARIANT:OVERRIDE,...", help="an extra variant (a sweep's)"
    )
    parser.add_argument("--prompts", type=int, default=360, help="held-out prompts per vocabulary, one seed each")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--set", nargs="*", default=[], help="train.py overrides for every variant")
    parser.add_argument("--world", nargs="*", default=[], help="overrides for every stage, cached ones too")
    parser.add_argument("--demo-set", nargs="*", default=[], help="demo.py overrides for the cached stages")
    parser.add_argument("--name", default="shapes_methods")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--reuse", action="store_true", help="read back variants already finished in --runs")
    args = parser.parse_args()
    define_variants(args.define)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants {' '.join(unknown)}: expected some of {', '.join(VARIANTS)}")
    args.cache_dir = args.cache_dir.resolve()
    args.set = [*args.world, *args.set]
    args.runs.mkdir(parents=True, exist_ok=True)
    machine = machine_line()
    ensure_cached_stages(args.cache_dir, args.runs, list(args.world), args.demo_set)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Path] = {}
    for name in args.variants:
        results[name] = run_variant(name, args, args.runs, runs)
    n = args.prompts
    report = "\n\n".join(
        [
            f"Adherence (%) after each variant, {n} held-out prompts per vocabulary, one seed each, [95% Wilson "
            "interval]; the base model's row is its score before training. Scored by the **evaluation judge**:",
            adherence_table(results, "evaluation_judge"),
            "The same images scored by the **reward judge** (the classifier `reward=judge` maximises):",
            adherence_table(results, "reward_judge"),
            "Cost of each stage on this machine (train s: the process's wall time less the adherence rendering):",
            cost_table(results),
        ]
    )
    for name, r in results.items():
        if r["read_back"]:
            report += f"\n\n{name}: read back from {r['run_dir']}" + (f" ({r['note']})" if r["note"] else "") + "."
    print(f"\n{machine}\n\n{report}\n")
    write_results(args.name, report, {"machine": machine, "prompts": n, "variants": results}, out_dir=args.out)


if __name__ == "__main__":
    main()
