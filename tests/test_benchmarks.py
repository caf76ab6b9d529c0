"""The benchmarks run from a clean clone: `--smoke` (tiny random model, seconds) prints their tables."""

from __future__ import annotations

import json
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
    assert (tmp_path / "raw.json").is_file()


def test_train_step_smoke_prints_its_table_and_checks_gradients(cache_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark("train_step.py", cache_dir, "--work", str(tmp_path / "work"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    written = json.loads((tmp_path / "train_step.json").read_text())
    assert written["command"].startswith("python benchmarks/train_step.py --smoke") and written["date"]
    assert [r["loop"] for r in written["results"]] == ["naive", "ours"]
    assert "| loop | images |" in (tmp_path / "train_step.md").read_text()
    assert "| loop | images |" in out and "naive (VAE encode per step)" in out and "ours (cached latents)" in out
    rows = [line for line in out.splitlines() if line.startswith(("| naive", "| ours"))]
    assert len(rows) == 2 and all("frozen with grad" not in row for row in rows)
    tensors = [row.split("|")[7].strip() for row in rows]
    assert all(t.split("/")[0] == t.split("/")[1] for t in tensors), tensors  # every text-encoder tensor


def test_adherence_smoke_judges_every_variant_on_the_same_prompts(cache_dir: Path, tmp_path: Path) -> None:
    result = run_benchmark(
        "adherence.py", cache_dir, "--variants", "pndm-50", "default", "deep-cache", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| variant | sampler | guidance | shape % | colour % | position % | mean % | vs first |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "pndm x4, fp32, deep cache off" in rows["pndm-50"] and "+0.0" in rows["pndm-50"]
    assert "dpm++ x4" in rows["default"] and "deep cache interval=3" in rows["deep-cache"]
    assert "20 held-out base prompts" in out and "chance: shape 25.0%" in out
    written = json.loads((tmp_path / "adherence.json").read_text())
    assert [v["variant"] for v in written["results"]["variants"]] == ["pndm-50", "default", "deep-cache"]
    assert all(0 <= v["adherence"]["mean"] <= 1 for v in written["results"]["variants"])


def test_precision_cpu_smoke_writes_numbers_in_range(tmp_path: Path) -> None:
    result = run_benchmark("precision_cpu.py", tmp_path / "cache", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| matmul 256x256 |" in result.stdout and "native bf16:" in result.stdout
    data = json.loads((tmp_path / "precision_cpu.json").read_text())
    figures = data["results"]
    assert data["machine"] and data["date"] and "precision_cpu.py --smoke" in data["command"]
    assert isinstance(figures["native_bf16"], bool) and figures["threads"] == 1
    assert [m["size"] for m in figures["matmul"]] == [128, 256]
    for m in figures["matmul"]:
        assert 0.01 < m["fp32_gflops"] < 1e5 and 0.01 < m["bf16_gflops"] < 1e5
        assert abs(m["bf16_speedup"] - m["bf16_gflops"] / m["fp32_gflops"]) < 1e-9
    unet = figures["unet"]
    assert 0 < unet["fp32_s"] < 60 and 0 < unet["bf16_autocast_s"] < 60
    assert abs(unet["bf16_over_fp32"] - unet["bf16_autocast_s"] / unet["fp32_s"]) < 1e-9
    assert "| U-Net call (32/64 ch, 8x8 latents, batch 2) |" in (tmp_path / "precision_cpu.md").read_text()
