"""The tools people use instead, rendering the same SD1.5-size model on this CPU, each in its own process.

python benchmarks/peers.py --threads 2                       # every peer, 512 px, 15 and 20 steps (hours)
python benchmarks/peers.py --peers sdcpp-f16 --steps 20      # one peer, one step count
python benchmarks/peers.py --peers diffusers ours-equal-work --model TINY --size 64 --steps 3  # a tiny folder: seconds
python benchmarks/peers.py --smoke                           # tests: the table with no peer run (no build)

Every peer renders the same prompt at `--size` px, seed 0, guidance 7.5, with DPM++ 2M where it offers it
(diffusers' `DPMSolverMultistepScheduler`), in a process of its own (so its peak RSS is its own), and
reports s/image, the median step (one guided U-Net call: cond and uncond; the steps after the first), peak
RSS, its one-off costs (loading, and the venv build, conversion or compilation when this run made them) and
the image's pixel std (a blank image, std 0, would mean the model did not load right). The model is the
random-weight SD1.5 of every benchmark here (`.cache/sd15-random`, `benchmarks.common.ensure_random_sd15`; the
cost of a render does not depend on the weight values; `--model` takes another diffusers folder):

  sdcpp-f16, sdcpp-q8_0   stable-diffusion.cpp (`stable-diffusion-cpp-python`, compiled by pip from source)
                          loading train.py's single-file export (`ldm.export.single_file`, CompVis keys, fp16)
                          of that folder, at f16 and q8_0 weights (so the row also shows that it loads our export)
  diffusers               `StableDiffusionPipeline.from_pretrained(folder)` at fp32, in this venv
  optimum-intel-static    optimum-intel's `OVStableDiffusionPipeline`: the folder converted once to OpenVINO IR
  optimum-intel-dynamic   (`.cache/peers/optimum-ir/`), then static shapes (`pipe.reshape(1, S, S, 1)`) or the
                          dynamic ones, compiled in each render's process
  ours-equal-work         this project's path (benchmarks/sample_cpu.py's `run_ours`) with every step guided, no
                          DeepCache (sample_cpu's `ours-full`): the same U-Net work as the others
  ours-default            sample.py's defaults (sample_cpu's `ours`: the guidance interval guides 9 of 15 steps)

A peer whose pins clash with ours gets a venv of its own under `.cache/peers/<name>/`, built once from
`benchmarks/peers/<name>.txt` (`sdcpp`, `optimum`). A peer that cannot be built or run keeps its row with the
reason, and no figure is shown that was not measured. Workers: `benchmarks/peers/<peer>_worker.py`, each
printing the fields of `benchmarks/worker_report.py`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import ROOT, default_cache_dir, ensure_random_sd15, print_and_write, run_json_subprocess, table
from benchmarks.worker_report import PROMPT

PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass(frozen=True)
class Peer:
    worker: str  # benchmarks/peers/<worker>
    args: tuple[str, ...] = ()  # the worker's own arguments, after the common ones (worker_report.worker_parser)
    venv: str | None = None  # a venv of its own, built from benchmarks/peers/<venv>.txt; None: this venv
    loads: str = "folder"  # "folder": the diffusers folder; "single-file": train.py's export of it (fp16)
    converts: bool = False  # the worker takes --ir, and a --convert-only run of it comes first (its one-off)


PEERS: dict[str, Peer] = {
    "sdcpp-f16": Peer("sdcpp_worker.py", ("--wtype", "f16"), venv="sdcpp", loads="single-file"),
    "sdcpp-q8_0": Peer("sdcpp_worker.py", ("--wtype", "q8_0"), venv="sdcpp", loads="single-file"),
    "diffusers": Peer("diffusers_worker.py"),
    "optimum-intel-static": Peer("optimum_worker.py", ("--shapes", "static"), venv="optimum", converts=True),
    "optimum-intel-dynamic": Peer("optimum_worker.py", ("--shapes", "dynamic"), venv="optimum", converts=True),
    "ours-equal-work": Peer("ours_worker.py", ("--settings", "equal-work")),
    "ours-default": Peer("ours_worker.py", ("--settings", "default")),
}
HEADERS = ["peer", "steps", "s/image", "s per step (guided U-Net call)", "peak RSS GiB", "one-off", "pixel std",
           "settings"]  # fmt: skip


def ensure_single_file(folder: Path, out: Path) -> Path:
    """The random SD1.5 folder as the single file train.py exports (fp16), written once."""
    if out.is_file():
        return out
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ldm.export.single_file import write_single_file

    print(f"writing {out} (once; about 2 GB)", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
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
    """`<root>/<name>/bin/python` with `benchmarks/peers/<name>.txt` installed; the build's seconds if built now.

    A failed build raises RuntimeError with pip's last error line (its whole output goes to stderr)."""
    venv = root / name
    python, stamp = venv / "bin" / "python", venv / ".installed"
    requirements = PEERS_DIR / f"{name}.txt"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return python, None
    print(f"building the {name} venv in {venv} (once; minutes)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)]
    done = subprocess.run(pip, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr, flush=True)
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["no error line"]
        raise RuntimeError(f"pip install -r {requirements.name} exited {done.returncode}: {errors[-1][:200]}")
    stamp.write_text(requirements.read_text())
    return python, time.perf_counter() - start


def ir_folder(args: argparse.Namespace, folder: Path) -> Path:
    """Where optimum-intel's IR of `folder` goes: one per model folder (its name and a hash of its path)."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:8]
    return args.venv_dir / "optimum-ir" / f"{folder.name}-{key}"


def worker_command(name: str, steps: int, args: argparse.Namespace, models: dict[str, Path]) -> list[str]:
    """The worker's script and arguments for one render of `name` at `steps`."""
    peer = PEERS[name]
    command = [
        str(PEERS_DIR / peer.worker), "--model", str(models[peer.loads]), "--steps", str(steps),
        "--size", str(args.size), "--threads", str(args.threads), "--prompt", PROMPT,
        "--out", str(args.image_dir / f"{name}-{steps}.png"), *peer.args,
    ]  # fmt: skip
    return [*command, "--ir", str(ir_folder(args, models["folder"]))] if peer.converts else command


def _failure(error: Exception) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[-1][:200]


class NotMeasured(Exception):
    """Why a peer's row has no figures (its message is the row's reason)."""


class Runs:
    """Runs each peer's renders; builds each venv (and converts each IR) once per run, remembering failures."""

    def __init__(self, args: argparse.Namespace, models: dict[str, Path]) -> None:
        self.args, self.models = args, models
        self.venvs: dict[str, tuple[Path, float | None] | str] = {}  # venv -> (python, build seconds) or why not
        self.converted: dict[str, dict[str, Any] | str] = {}  # venv -> the --convert-only result or why not

    def python(self, venv: str | None) -> tuple[str, dict[str, Any]]:
        """The peer's interpreter and its venv's one-off (`build_s`, on the first row of the run that built it)."""
        if venv is None:
            return sys.executable, {}
        first = venv not in self.venvs
        if first:
            try:
                self.venvs[venv] = ensure_venv(venv, self.args.venv_dir)
            except (RuntimeError, subprocess.CalledProcessError, OSError) as error:
                self.venvs[venv] = f"not measured: its venv did not build ({_failure(error)})"
        built = self.venvs[venv]
        if isinstance(built, str):
            raise NotMeasured(built)
        return str(built[0]), {"build_s": built[1] if first else None}

    def convert(self, name: str, python: str) -> dict[str, Any]:
        """The peer's one-off conversion, in a process of its own (the render's peak RSS stays the render's)."""
        venv = PEERS[name].venv or ""
        first = venv not in self.converted
        if first:
            command = [*worker_command(name, 1, self.args, self.models), "--convert-only"]
            try:
                self.converted[venv] = run_json_subprocess(command, python=python)
            except (RuntimeError, ValueError) as error:
                self.converted[venv] = f"not measured: the conversion failed ({_failure(error)})"
        done = self.converted[venv]
        if isinstance(done, str):
            raise NotMeasured(done)
        return {"convert_s": done["convert_s"] if first else None}

    def run(self, name: str, steps: int) -> dict[str, Any]:
        """One render; a failure becomes the row's reason instead of a figure."""
        peer = PEERS[name]
        try:
            python, one_off = self.python(peer.venv)
            if peer.converts:
                one_off.update(self.convert(name, python))
        except NotMeasured as why:
            return {"error": str(why)}
        try:
            result = run_json_subprocess(worker_command(name, steps, self.args, self.models), python=python)
        except (RuntimeError, ValueError) as error:
            return {"error": f"not measured: the render failed ({_failure(error)})"}
        return {**result, **one_off}


def one_off(r: dict[str, Any]) -> str:
    """The one-off cell: load seconds, and the compile, conversion, engine export and venv build of this run."""
    parts = [f"{r['load_s']:.1f} s load"]
    if r.get("compile_s") is not None:
        parts.append(f"{r['compile_s']:.1f} s compile")
    if r.get("export_s"):
        parts.append(f"{r['export_s']:.0f} s engine export")
    if "convert_s" in r:
        parts.append("converted earlier" if r["convert_s"] is None else f"{r['convert_s']:.0f} s convert")
    if "build_s" in r:
        parts.append("built earlier" if r["build_s"] is None else f"{r['build_s']:.0f} s build")
    return "; ".join(parts)


def rows_for(results: dict[str, dict[int, dict[str, Any]]], steps: list[int]) -> list[list[Any]]:
    """A row per peer and step count: its figures, or the reason it has none; a row for each peer not run."""
    rows = []
    for peer in PEERS:
        if peer not in results:
            rows.append([peer, "-", "not measured: not in this run's --peers", *["-"] * 5])
            continue
        for n in steps:
            r = results[peer][n]
            if "error" in r:
                rows.append([peer, n, r["error"], *["-"] * 5])
                continue
            step = statistics.median(r["step_s"]) if r["step_s"] else None
            rows.append(
                [peer, n, f"{r['image_s']:.1f}", f"{step:.2f}" if step else "not measured", f"{r['peak_rss_gib']:.2f}",
                 one_off(r), f"{r['pixel_std']:.1f}", r.get("settings", "-")]
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--steps", type=int, nargs="+", default=[15, 20])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", type=Path, default=None, help="SD1.5 diffusers folder (default: random weights)")
    parser.add_argument("--venv-dir", type=Path, default=default_cache_dir() / "peers")
    parser.add_argument("--image-dir", type=Path, default=ROOT / "outputs" / "peers", help="each render's PNG")
    parser.add_argument("--smoke", action="store_true", help="tests: no peer is built or run")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--name", default="peers", help="the result files' name (a partial run: not peers.md)")
    args = parser.parse_args(argv)
    args.image_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    if args.smoke:
        results = {p: {n: {"error": "not measured: --smoke runs no peer"} for n in args.steps} for p in args.peers}
    else:
        folder = ensure_random_sd15(args.model or default_cache_dir() / "sd15-random")
        models = {"folder": folder}
        if any(PEERS[p].loads == "single-file" for p in args.peers):
            models["single-file"] = ensure_single_file(folder, args.venv_dir / f"{folder.name}-fp16.safetensors")
        runs = Runs(args, models)
        for peer in args.peers:
            results[peer] = {n: runs.run(peer, n) for n in args.steps}
            print(f"{peer}: done", file=sys.stderr, flush=True)
    model = "random-weight SD1.5 components" if args.model is None else f"the folder {args.model.name}"
    text = (
        f"{args.size} px, guidance 7.5, DPM++ 2M where the peer has it, seed 0, {args.threads} threads, one prompt "
        f"({PROMPT!r}); the model: {model}, as a diffusers folder (fp32), and for "
        "stable-diffusion.cpp as this project's single-file export of it (fp16). s per step: the median of the "
        "guided steps after the first. pixel std: a blank image (std 0) would mean the model did not load right.\n\n"
        + table(HEADERS, rows_for(results, args.steps))
        + "\n"
    )
    print_and_write(args.name, text, results, out_dir=args.out_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
