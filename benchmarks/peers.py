"""The tools people use instead, rendering the same SD1.5-size model on this CPU, each in its own process and venv.

python benchmarks/peers.py                                   # every peer this script runs, 512 px, 15 and 20 steps
python benchmarks/peers.py --peers sdcpp-f16 --steps 20      # one peer, one step count
python benchmarks/peers.py --smoke                           # tests: the table with no peer run (no build)

What each peer loads is this project's own export: `final_model/model.safetensors`'s writer
(`ldm.export.single_file`, the CompVis single-file layout at fp16) applied to the random-weight SD1.5
components that every benchmark here uses (`.cache/sd15-random`; the cost of a render does not depend on the
weight values). So a row shows two things: the peer loads what train.py exports, and what one image costs
in it. A peer whose pins clash with ours gets a venv of its own under `.cache/peers/<name>/`, built once from
`benchmarks/peers/<name>.txt` (the build's one-off seconds are reported when this run built it).

Peers run now: stable-diffusion.cpp (`stable-diffusion-cpp-python`, compiled by pip from source) at f16 and
q8_0, DPM++ 2M, guidance 7.5. Rows for the peers of the comparison that this script does not run yet
(diffusers, optimum-intel static and dynamic, ours) say so: no figure is shown that was not measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import ROOT, default_cache_dir, ensure_random_sd15, print_and_write, run_json_subprocess, table

PEERS_DIR = Path(__file__).resolve().parent / "peers"
# peer -> (its venv, built from benchmarks/peers/<venv>.txt and run by <venv>_worker.py; the worker's arguments)
PEERS: dict[str, tuple[str, list[str]]] = {
    "sdcpp-f16": ("sdcpp", ["--wtype", "f16"]),
    "sdcpp-q8_0": ("sdcpp", ["--wtype", "q8_0"]),
}
NOT_RUN = {
    "diffusers": "not measured: this script does not run it yet",
    "optimum-intel static": "not measured: this script does not run it yet",
    "optimum-intel dynamic": "not measured: this script does not run it yet",
    "ours (equal work, default)": "not measured here: benchmarks/sample_cpu.py measures it, not yet in this run",
}


def ensure_single_file(folder: Path, out: Path) -> Path:
    """The random SD1.5 folder as the single file train.py exports (fp16), written once."""
    if out.is_file():
        return out
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ldm.export.single_file import write_single_file

    print(f"writing {out} (once; about 2 GB)", file=sys.stderr, flush=True)
    write_single_file(
        out,
        UNet2DConditionModel.from_pretrained(folder / "unet"),
        AutoencoderKL.from_pretrained(folder / "vae"),
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        dtype=torch.float16,
        base=str(folder),
        title="random-weight SD1.5 (benchmarks)",
    )
    return out


def ensure_venv(name: str, root: Path) -> tuple[Path, float | None]:
    """`<root>/<name>/bin/python` with `benchmarks/peers/<name>.txt` installed; the build's seconds if built now."""
    venv = root / name
    python, stamp = venv / "bin" / "python", venv / ".installed"
    requirements = PEERS_DIR / f"{name}.txt"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return python, None
    print(f"building the {name} venv in {venv} (once; pip compiles it from source)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    stamp.write_text(requirements.read_text())
    return python, time.perf_counter() - start


def run_peer(peer: str, steps: int, args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """One render in the peer's venv; a failure becomes the row's reason instead of a figure."""
    venv_name, extra = PEERS[peer]
    try:
        python, build_s = ensure_venv(venv_name, args.venv_dir)
    except (subprocess.CalledProcessError, OSError) as error:
        return {"error": f"not measured: its venv did not build ({error})"}
    worker = [
        str(PEERS_DIR / f"{venv_name}_worker.py"), "--model", str(model), "--steps", str(steps),
        "--threads", str(args.threads), "--size", str(args.size), *extra,
        "--out", str(args.image_dir / f"{peer}-{steps}.png"),
    ]  # fmt: skip
    try:
        result = run_json_subprocess(worker, python=str(python))
    except (RuntimeError, ValueError) as error:
        return {"error": f"not measured: the render failed ({str(error).strip().splitlines()[-1][:200]})"}
    result["build_s"] = build_s
    return result


def rows_for(results: dict[str, dict[int, dict[str, Any]]], steps: list[int]) -> list[list[Any]]:
    rows = []
    for peer, by_steps in results.items():
        for n in steps:
            r = by_steps[n]
            if "error" in r:
                rows.append([peer, n, r["error"], "-", "-", "-", "-"])
                continue
            build = f"{r['build_s']:.0f} s build" if r.get("build_s") is not None else "built earlier"
            step = statistics.median(r["step_s"]) if r["step_s"] else None
            rows.append(
                [peer, n, f"{r['image_s']:.1f}", f"{step:.2f}" if step else "not measured", f"{r['peak_rss_gib']:.2f}",
                 f"{r['load_s']:.1f} s load; {build}", f"{r['pixel_std']:.1f}"]
            )  # fmt: skip
    for peer, reason in NOT_RUN.items():
        rows.append([peer, "-", reason, "-", "-", "-", "-"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=sorted(PEERS))
    parser.add_argument("--steps", type=int, nargs="+", default=[15, 20])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", type=Path, default=None, help="SD1.5 diffusers folder (default: random weights)")
    parser.add_argument("--venv-dir", type=Path, default=default_cache_dir() / "peers")
    parser.add_argument("--smoke", action="store_true", help="tests: no peer is built or run")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.image_dir = ROOT / "outputs" / "peers"
    args.image_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    if args.smoke:
        results = {p: {n: {"error": "not measured: --smoke runs no peer"} for n in args.steps} for p in args.peers}
    else:
        folder = ensure_random_sd15(args.model or default_cache_dir() / "sd15-random")
        model = ensure_single_file(folder, args.venv_dir / "sd15-random-fp16.safetensors")
        for peer in args.peers:
            results[peer] = {n: run_peer(peer, n, args, model) for n in args.steps}
            print(f"{peer}: done", file=sys.stderr, flush=True)
    headers = ["peer", "steps", "s/image", "s per step (guided U-Net call)", "peak RSS GiB", "one-off", "pixel std"]
    text = (
        f"{args.size} px, guidance 7.5, DPM++ 2M where the peer has it, seed 0, {args.threads} threads; the model is "
        "this project's single-file export (fp16) of random-weight SD1.5 components. pixel std: a blank image "
        "(std 0) would mean the file did not load right.\n\n" + table(headers, rows_for(results, args.steps)) + "\n"
    )
    print_and_write("peers", text, results, out_dir=args.out_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
