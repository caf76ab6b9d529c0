"""Quality of the fast sampling paths, judged on the offline shapes world (issue 5's quality check).

python benchmarks/adherence.py                                  # base model, base prompts, 7.5 guidance
python benchmarks/adherence.py --checkpoint outputs/DATE/TIME/checkpoints/last.ckpt --vocabulary new
python benchmarks/adherence.py --set guidance_scale=3           # any sample.py override, every variant
python benchmarks/adherence.py --smoke                          # a minute: a toy world, 3 steps a stage (CI)

The table goes to benchmarks/results/<--name>.{md,json} (default adherence) with the machine, the command
and the date (`benchmarks.common.write_results`); `--out DIR` writes there; --smoke writes to --out or a temp dir.

Why here and not in a unit test: the numbers need the trained shapes world (`make demo` builds it in
.cache/shapes) and minutes of sampling. Every variant renders the same fixed held-out prompts with the same
seeds through `sample.py`'s path (conf/sample.yaml + overrides, `load_for_inference`, `generate`), and the
world's attribute judge scores shape, colour and position against the prompt:
  pndm-50      diffusers' default sampler: PNDM, 50 steps, fp32, every step guided (sample_cpu.py's baseline)
  default      sample.py's defaults (DPM-Solver++ 15 steps, dtype auto, guidance interval [0.2, 0.8]:
               9 of 15 steps guided; engine.backend=auto: the runtime measured fastest on this CPU)
  default-full the same with every step guided (guidance_interval=[0.0,1.0], the default before 2026-12-01)
  default-fp32 default on torch in fp32 (engine.backend=torch dtype=fp32: the torch fp32 reference)
  torch        default on torch (bf16 autocast on a CPU with a bf16 unit)   deep-cache  default + interval 3
  ddim-20      the sampler the demo's report uses, every step guided
  default-gi   default + guidance_interval=[0.2,0.8] given explicitly (the same as default since 2026-12-01;
               every -gi name says so explicitly, the others follow the default)
  openvino     default on the OpenVINO engine (engine.backend=openvino; -gi with the interval too)
  openvino-int8  openvino + engine.quantize=int8, calibrated on three of the world's training captions
  openvino-deep-cache  openvino + deep_cache.interval=3 (-gi: and the interval; openvino-int8-deep-cache-gi:
               all three, the fastest opt-in path)
  dpm++-10, unipc-10 (and -8)  default with that solver at 10 (8) steps (dpm++_karras refuses the world's
               zero-terminal-SNR schedule)
Each mean carries its 95% Wilson interval over the prompts, and `vs first` Newcombe's interval of the
difference (ldm.world.adherence), so a gap can be read against the noise of the prompt count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, compose_project_config, default_cache_dir, machine_line, table, write_results

GI, FULL, DC = "guidance_interval=[0.2,0.8]", "guidance_interval=[0.0,1.0]", "deep_cache.interval=3"
OV, INT8 = "engine.backend=openvino", "engine.quantize=int8"  # int8: + calibration_overrides()
FEW_STEP = ("dpm++", "unipc")
VARIANTS: dict[str, list[str]] = {  # variant -> sample.py overrides on top of its defaults
    "pndm-50": ["scheduler=pndm", "steps=50", "dtype=fp32", "engine.backend=torch", FULL],
    "default": [],
    "default-full": [FULL],
    "default-fp32": ["dtype=fp32", "engine.backend=torch"],  # the torch fp32 reference (auto may pick OpenVINO f32)
    "torch": ["engine.backend=torch"],  # torch at the CPU's precision (bf16 autocast where it has a bf16 unit)
    "deep-cache": [DC],
    "ddim-20": ["scheduler=ddim", "steps=20", FULL],
    "default-gi": [GI],
    "openvino": [OV],
    "openvino-gi": [OV, GI],
    "openvino-int8": [OV, INT8],
    "openvino-deep-cache": [OV, DC],
    "openvino-deep-cache-gi": [OV, DC, GI],
    "openvino-int8-deep-cache-gi": [OV, INT8, DC, GI],  # the fastest opt-in path
    # fewer steps with a few-step solver (the default's guidance interval: 6 of 10 steps guided, 5 of 8)
    **{f"{solver}-{n}": [f"scheduler={solver}", f"steps={n}"] for solver in FEW_STEP for n in (8, 10)},
}


def calibration_overrides(overrides: list[str]) -> list[str]:
    """int8 calibrates on the world's own captions (training templates, never the held-out ones), not the
    default SD prompts: its activation ranges should come from the trajectories it will run."""
    if INT8 not in overrides:
        return []
    from ldm.world.scenes import all_combinations
    from ldm.world.vocab import BASE

    captions = [BASE.caption(attrs, BASE.templates[i]) for i, attrs in enumerate(all_combinations()[::41])]
    return ["engine.calibration_prompts=[" + ",".join(f"'{c}'" for c in captions) + "]"]


def compose_sample(model: str, checkpoint: str | None, overrides: list[str]) -> Any:
    extra = [f"checkpoint={checkpoint}"] if checkpoint else []
    return compose_project_config("sample", [f"model.pretrained={model}", *extra, *overrides])


def judge_variant(
    name: str, args: argparse.Namespace, judge: Any, prompts: list
) -> tuple[dict[str, float], float, dict[str, Any]]:
    """Adherence of one variant on `prompts` and its seconds per image."""
    from ldm.generation.loading import load_for_inference
    from ldm.world.adherence import SamplingPlan, render, score

    overrides = [*VARIANTS[name], *args.set]
    cfg = compose_sample(args.model, args.checkpoint, [*overrides, *calibration_overrides(overrides)])
    module = load_for_inference(cfg, base_override=True)
    interval = tuple(cfg.guidance_interval)
    plan = SamplingPlan(
        cfg.steps, cfg.guidance_scale, cfg.scheduler, args.seed, args.batch_size, interval, cfg.guidance_rescale
    )
    start = time.perf_counter()
    images = render(module, prompts, plan, desc=name)
    seconds = (time.perf_counter() - start) / len(prompts)
    return score(judge, images, prompts), seconds, {**images[0].info}


def smoke_world(cache: Path) -> tuple[str, str]:
    """A toy world (tests/test_world.py's sizes), each stage a few steps, via demo.py: it runs, it judges nothing."""
    import subprocess

    small = [
        "data.generate.num_images=48", "data.world.val_images=8", "data.world.test_images=8", "data.batch_size=8",
        "++trainer.max_steps=3", "++trainer.val_check_interval=3", "++trainer.check_val_every_n_epoch=null",
    ]  # fmt: skip
    command = [
        sys.executable, "demo.py", f"paths.cache_dir={cache}", f"hydra.run.dir={cache}/adherence-smoke-run",
        "stages=[shapes_vae,shapes_base,shapes_judge]", "overrides=[" + ",".join(f'"{o}"' for o in small) + "]",
        'stage_overrides.shapes_judge=["callbacks.export.min_accuracy=0.0"]',
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return str(cache / "shapes" / "base"), str(cache / "shapes" / "judge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the shapes base folder (default: the demo's cache)")
    parser.add_argument("--judge", default=None, help="the judge folder (default: the demo's cache)")
    parser.add_argument("--checkpoint", default=None, help="a stage-3 checkpoint (default: the base model as is)")
    parser.add_argument("--vocabulary", default="base", choices=["base", "new"])
    parser.add_argument("--prompts", type=int, default=120, help="held-out prompts (120 = every combination once)")
    parser.add_argument("--variants", nargs="+", default=["pndm-50", "default", "default-fp32", "deep-cache"])
    parser.add_argument("--set", nargs="*", default=[], help="sample.py overrides for every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=20, help="prompts per generate() call (own seed each)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="a few-step world and 20 prompts: seconds")
    parser.add_argument("--out", type=Path, default=None, help="folder for the results (default benchmarks/results/)")
    parser.add_argument("--name", default="adherence", help="results file name, without .md/.json")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants {' '.join(unknown)}: expected some of {', '.join(VARIANTS)}")

    import torch

    from ldm.world.adherence import chance_levels, difference_interval, eval_prompts, with_intervals
    from ldm.world.export import load_judge
    from ldm.world.vocab import ATTRIBUTES

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = Path(default_cache_dir()) / "shapes"
    if args.smoke:
        args.model, args.judge = smoke_world(Path(default_cache_dir()) / "adherence-smoke")
        args.prompts = min(args.prompts, 20)
        args.set = [*args.set, "steps=4"]
        VARIANTS["pndm-50"] = ["scheduler=pndm", "dtype=fp32"]
    args.model = args.model or str(shapes / "base")
    args.judge = args.judge or str(shapes / "judge")
    for label, path in (("--model", Path(args.model) / "model_index.json"), ("--judge", Path(args.judge))):
        if not path.exists():
            sys.exit(f"error: {label}={path.parent if label == '--model' else path}: not found; run `make demo` first")

    judge, judge_report = load_judge(args.judge)
    prompts = eval_prompts(args.vocabulary, args.prompts, "held_out", args.seed)
    setup = (
        f"model {args.model}, checkpoint {args.checkpoint or 'none'}; {len(prompts)} held-out {args.vocabulary} "
        f"prompts, prompt i seed {args.seed} + i; overrides for all: {' '.join(args.set) or 'none'}"
    )
    print(machine_line())
    print(setup, flush=True)
    rows, baseline, data = [], None, []
    for name in args.variants:
        shares, seconds, info = judge_variant(name, args, judge, prompts)
        result = with_intervals(shares, len(prompts))
        baseline = baseline or result
        triple = (result["mean"], *result["ci95"]["mean"])
        delta = 100 * (result["mean"] - baseline["mean"])
        d_low, d_high = (100 * x for x in difference_interval(triple, (baseline["mean"], *baseline["ci95"]["mean"])))
        settings = f"{info['scheduler']} x{info['steps']}, {info['precision']}, deep cache {info['deep_cache']}"
        if "guidance_interval" in info:
            settings += f", guidance interval {info['guidance_interval']}"
        scores = [f"{100 * result[a]:.1f}" for a in ATTRIBUTES]
        mean = f"{100 * triple[0]:.1f} [{100 * triple[1]:.1f}, {100 * triple[2]:.1f}]"
        versus = f"{delta:+.1f} [{d_low:+.1f}, {d_high:+.1f}]"
        rows.append([name, settings, info["guidance_scale"], *scores, mean, versus, f"{seconds:.2f}"])
        data.append({"variant": name, "settings": settings, "guidance_scale": float(info["guidance_scale"]),
                     "adherence": result, "vs_first_points": delta, "vs_first_ci95_points": [d_low, d_high],
                     "seconds_per_image": seconds})  # fmt: skip
        print(f"{name}: mean {100 * result['mean']:.1f}%", flush=True)
    chance = chance_levels()
    headers = ["variant", "sampler", "guidance", *(f"{a} %" for a in ATTRIBUTES), "mean % [95% CI]",
               "vs first [95% CI]", "s/image"]  # fmt: skip
    closing = (
        "chance: "
        + ", ".join(f"{a} {100 * chance[a]:.1f}%" for a in ATTRIBUTES)
        + "; judge accuracy on renders: "
        + ", ".join(f"{a} {100 * v:.1f}%" for a, v in judge_report["accuracy"]["renders"].items())
    )
    text = "\n".join(["## adherence: the samplers judged on the shapes world", "", setup, "", table(headers, rows),
                      "", closing])  # fmt: skip
    print(table(headers, rows))
    print(closing)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ldm-adherence-results-")) if args.smoke else None)
    paths = write_results(args.name, text, {"setup": setup, "variants": data, "chance": chance}, out_dir=out)
    print(f"\nwritten: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
