"""bf16 vs fp32 on this CPU: square matmuls and a small U-Net call, the figures the precision policy follows.

python benchmarks/precision_cpu.py --threads 2          # writes benchmarks/results/precision_cpu.{md,json}
python benchmarks/precision_cpu.py --smoke --out DIR    # seconds, tiny sizes (the tests); never writes results/

Why: `ldm.hardware.cpu_has_native_bf16` decides whether training (`16-mixed` -> `bf16-mixed` or `32-true`)
and sampling (`dtype: auto`) use bf16 on a CPU. On a CPU with AVX512-BF16 or AMX bf16 matmuls run on the
bf16 unit and beat fp32; without one oneDNN emulates them and bf16 is many times slower. This script
measures both sides of that on the machine it runs on, and prints the CPU's flags with the figures, so the
same command on an AVX2-only CPU reproduces the "without a bf16 unit" figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_time, print_and_write, table

FLAGS_SHOWN = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
# A small SD-like U-Net: 3 levels, cross-attention on SD1.5's 768-d text states, 32x32 latents, batch 2 (CFG).
SMALL_UNET = {
    "block_out_channels": (64, 128, 256),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "sample_size": 32,
}
TINY_UNET = {  # --smoke: seconds
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "sample_size": 8,
}


def matmul_gflops(size: int, dtype: torch.dtype, repeats: int) -> float:
    """Median GFLOP/s of one `size` x `size` matmul in `dtype` (2 n^3 FLOP)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds, _ = median_time(lambda: a @ b, repeats, warmup=1)
    return 2 * size**3 / seconds / 1e9


def unet_call_seconds(config: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of one CFG-batch U-Net call in fp32 and under CPU bf16 autocast (as sample.py runs it)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **config).eval().requires_grad_(False)
    side = config["sample_size"]
    latents = torch.randn(2, 4, side, side)
    text = torch.randn(2, 77, config["cross_attention_dim"])
    t = torch.tensor([500, 500])

    def fp32() -> None:
        with torch.inference_mode():
            unet(latents, t, encoder_hidden_states=text)

    def bf16() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            unet(latents, t, encoder_hidden_states=text)

    fp32_s, _ = median_time(fp32, repeats, warmup=1)
    bf16_s, _ = median_time(bf16, repeats, warmup=1)
    return {"fp32_s": fp32_s, "bf16_autocast_s": bf16_s, "bf16_over_fp32": bf16_s / fp32_s}


def measure(smoke: bool, repeats: int) -> dict[str, Any]:
    """Every figure of the report, as plain numbers (the JSON file)."""
    from ldm.hardware import cpu_flags, cpu_has_native_bf16, cpu_name

    flags = cpu_flags()
    sizes = [128, 256] if smoke else [512, 1024, 2048]
    matmuls = []
    for size in sizes:
        fp32 = matmul_gflops(size, torch.float32, repeats)
        bf16 = matmul_gflops(size, torch.bfloat16, repeats)
        matmuls.append({"size": size, "fp32_gflops": fp32, "bf16_gflops": bf16, "bf16_speedup": bf16 / fp32})
    config = TINY_UNET if smoke else SMALL_UNET
    return {
        "cpu": cpu_name(),
        "flags": [f for f in FLAGS_SHOWN if f in flags],
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "matmul": matmuls,
        "unet": {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, "batch": 2,
                 **unet_call_seconds(config, repeats)},
    }  # fmt: skip


def _versus(speedup: float) -> str:
    """bf16's speed relative to fp32 in words: '1.53x faster' or '17x slower'."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.3g}x slower"


def report(data: dict[str, Any]) -> str:
    """The markdown the script prints and writes."""
    unit = "yes (bf16 runs on the bf16 unit)" if data["native_bf16"] else "no (bf16 is emulated)"
    rows = [
        [f"matmul {m['size']}x{m['size']}", f"{m['fp32_gflops']:.1f} GFLOP/s", f"{m['bf16_gflops']:.1f} GFLOP/s",
         _versus(m["bf16_speedup"])]
        for m in data["matmul"]
    ]  # fmt: skip
    u = data["unet"]
    channels = "/".join(str(c) for c in u["config"]["block_out_channels"])
    side = u["config"]["sample_size"]
    rows.append(
        [f"U-Net call ({channels} ch, {side}x{side} latents, batch 2)", f"{u['fp32_s']:.3f} s",
         f"{u['bf16_autocast_s']:.3f} s (autocast)", _versus(1 / u["bf16_over_fp32"])]
    )  # fmt: skip
    lines = [
        "## precision_cpu: bf16 vs fp32 on this CPU",
        "",
        f"CPU: {data['cpu']}; flags: {' '.join(data['flags']) or 'none of ' + ' '.join(FLAGS_SHOWN)}; "
        f"native bf16: {unit}; {data['threads']} torch threads; median of {data['repeats']} repeats.",
        "",
        table(["what", "fp32", "bf16", "bf16 vs fp32"], rows),
        "",
        "(medians; the U-Net's bf16 call is `torch.autocast('cpu', bfloat16)` around an fp32 model, as"
        " `sample.py dtype=bf16` runs it.)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes to --out or a temp dir")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5; smoke 2)")
    parser.add_argument("--out", type=Path, default=None, help="folder for precision_cpu.{md,json}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = measure(args.smoke, args.repeats or (2 if args.smoke else 5))
    print_and_write("precision_cpu", report(data), data, out_dir=args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
