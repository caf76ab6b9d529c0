"""The benchmarks run from a clean clone: `--smoke` (tiny random model, seconds) prints their tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LDM_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke", "--threads", "1", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sample_cpu_smoke_prints_its_table(cache_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark("sample_cpu.py", cache_dir, "--json", str(tmp_path / "raw.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| variant | solver x steps |" in out and "matmul peak" in out and "machine:" in out
    for variant in ("baseline", "ours", "deep-cache"):
        assert f"| {variant} |" in out
    assert "| baseline | pndm x50 | fp32, slicing on |" in out
    assert out.strip().splitlines()[-1].startswith("speed-up of sample.py's default over the baseline: ")
    assert (tmp_path / "raw.json").is_file()


def test_train_step_smoke_prints_its_table_and_checks_gradients(cache_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark("train_step.py", cache_dir, "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| loop | images |" in out and "naive (VAE encode per step)" in out and "ours (cached latents)" in out
    rows = [line for line in out.splitlines() if line.startswith(("| naive", "| ours"))]
    assert len(rows) == 2 and all("frozen with grad" not in row for row in rows)
    tensors = [row.split("|")[7].strip() for row in rows]
    assert all(t.split("/")[0] == t.split("/")[1] for t in tensors), tensors  # every text-encoder tensor


def test_adherence_smoke_judges_every_variant_on_the_same_prompts(cache_dir: Path) -> None:
    result = run_benchmark("adherence.py", cache_dir, "--variants", "pndm-50", "default", "deep-cache")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| variant | sampler | guidance | shape % | colour % | position % | mean % | vs first |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "pndm x4, fp32, deep cache off" in rows["pndm-50"] and "+0.0" in rows["pndm-50"]
    assert "dpm++ x4" in rows["default"] and "deep cache interval=3" in rows["deep-cache"]
    assert "20 held-out base prompts" in out and "chance: shape 25.0%" in out
