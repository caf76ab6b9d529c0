"""Shared benchmark helpers: SD1.5-size random components, a matmul roof, FLOP counts, RSS, tables.

Why random weights: the cost of a U-Net call or a VAE decode does not depend on the weight values, and
the benchmarks must run offline from a fresh clone. The components are built from SD1.5's own config
files (`benchmarks/sd15_config/`, copied from the `stable-diffusion-v1-5` repository) and written once as
a diffusers folder, so every benchmark loads them through the same `from_pretrained` code as the real
model (which is where load-time memory goes).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.worker_report import peak_rss_gib  # noqa: F401 (one definition; the peers' workers use it too)

ROOT = Path(__file__).resolve().parents[1]
SD15_CONFIG_DIR = Path(__file__).resolve().parent / "sd15_config"
GIB = 2**30


# --- components -------------------------------------------------------------------------------------
def _read(sub: str, name: str = "config.json") -> dict[str, Any]:
    return json.loads((SD15_CONFIG_DIR / sub / name).read_text())


def build_random_sd15(seed: int = 0) -> Any:
    """SD1.5's five components at full size with random weights (seeded), as a pipeline object."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ldm.assets import CLIP_TOKENIZER_DIR

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_read("unet"))
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(_read("vae"))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(_read("text_encoder")))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR),
        unet=unet,
        scheduler=PNDMScheduler.from_config(_read("scheduler", "scheduler_config.json")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_random_sd15(path: str | os.PathLike) -> Path:
    """`path`, holding the random SD1.5 diffusers folder (about 4.3 GB fp32), written once.

    Written into a sibling temp folder and renamed, so an interrupted build never leaves half a model.
    """
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"building random-weight SD1.5 components in {path} (once; about 4.3 GB)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        pipe = build_random_sd15()
        pipe.save_pretrained(tmp)
        del pipe
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def compose_project_config(name: str, overrides: Sequence[str]) -> Any:
    """conf/<name>.yaml + overrides, composed as the entry point (train.py, sample.py) would."""
    from hydra import compose, initialize_config_dir

    from ldm.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, list(overrides))


def default_cache_dir() -> Path:
    """The project's cache (`paths.cache_dir`: LDM_CACHE_DIR or `.cache` in the repository)."""
    return Path(os.environ.get("LDM_CACHE_DIR", ROOT / ".cache"))


# --- measurements -----------------------------------------------------------------------------------
def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a square matmul: the roof the U-Net's achieved GFLOP/s is compared against."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds, _ = median_time(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs (multiply-add = 2) of the matmuls, convolutions and attention that `fn()` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def machine_line() -> str:
    """CPU model, the flags that decide matmul speed, cores, load average, torch threads."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    shown = " ".join(f for f in wanted if f in flags) or "no AVX2"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model} ({shown}); {os.cpu_count()} cores; load average {load}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def module_and_batch(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """train.py's module for `cfg` (its preservation teacher cached) and the first training batch, in train mode."""
    from hydra.utils import instantiate

    from ldm.training.run import build_module

    module = build_module(cfg)
    if module.preservation is not None:
        module.preservation.cache_teacher(module)
    data = instantiate(cfg.data, tokenizer=module.tokenizer)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module.train()
    return module, batch


# --- running parts in their own process (peak RSS is per process) ------------------------------------
def run_json_subprocess(
    args: Sequence[str],
    timeout: float | None = None,
    *,
    env: dict[str, str] | None = None,
    unset: Sequence[str] = (),
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run `python ARGS` (a benchmark's worker mode), which prints one JSON line last; return it.

    `env` adds variables to this process's environment and `unset` removes some, for the worker only;
    `python` is another interpreter (a peer's own venv)."""
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, **(env or {})}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [python, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- output -----------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (prints readably in a terminal and pastes into the README)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, report: str, data: Any, *, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write a benchmark's printed report to `<out_dir>/<name>.md` and its figures to `<name>.json`.

    Why files: the docs link these files instead of copying tables by hand, so a figure lives in one place.
    Both carry the machine, the exact command and the date (UTC), so a reader knows what the figures are of.
    `out_dir` defaults to benchmarks/results/; smoke runs (tests) write elsewhere and never touch those.
    """
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = machine_line()
    header = f"<!-- written by `{command}`; rerun it to refresh this file -->\n\n"
    header += f"- command: `{command}`\n- date: {date}\n- machine: {machine}\n\n"
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(header + report.rstrip() + "\n")
    js.write_text(json.dumps({"command": command, "date": date, "machine": machine, "results": data}, indent=2) + "\n")
    return [md, js]


def print_and_write(name: str, report: str, data: Any, *, out_dir: Path | None, smoke: bool) -> list[Path]:
    """Print the report, then `write_results` it: to `out_dir`, else a temp folder for a smoke run (which
    must never overwrite the real figures in benchmarks/results/), else benchmarks/results/."""
    print(report)
    out = out_dir or (Path(tempfile.mkdtemp(prefix=f"ldm-{name}-")) if smoke else None)
    paths = write_results(name, report, data, out_dir=out)
    print(f"\nwritten: {', '.join(str(p) for p in paths)}")
    return paths
