"""What a step preview costs next to the step it previews, at 512 px (64x64 latents) on this CPU.

python benchmarks/preview_cost.py              # SD1.5-size U-Net (random weights), ~2 min on 2 quiet cores
python benchmarks/preview_cost.py --smoke      # a small U-Net, seconds (CI); writes outside results/

Measured in one process, with the same threads: the app's preview (latents -> RGB by SD1.5's 4x3 factors,
then the PNG the app serves) and one classifier-free-guidance U-Net call (batch 2, 77 tokens) of SD1.5's
U-Net built from benchmarks/sd15_config/ (the cost does not depend on the weight values), in bf16 autocast
where the CPU has a bf16 unit (sample.py's `dtype: auto`), else fp32. The table gives medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SD15_CONFIG_DIR, median_time, table, write_results
from ldm.generation.output import png_bytes
from ldm.generation.preview import SD15_LATENT_RGB, LatentPreview
from ldm.hardware import cpu_has_native_bf16, cpu_name


def unet_call_seconds(side: int, repeats: int, smoke: bool) -> tuple[float, str]:
    """Median seconds of one CFG U-Net call on (2, 4, side, side) latents."""
    from diffusers import UNet2DConditionModel

    config = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    if smoke:
        config.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, attention_head_dim=4)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    latents = torch.randn(2, 4, side, side)
    context = torch.randn(2, 77, config["cross_attention_dim"])
    bf16 = cpu_has_native_bf16()

    def call() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            unet(latents, 500, encoder_hidden_states=context)

    seconds, _ = median_time(call, repeats=repeats, warmup=1)
    return seconds, "bf16-autocast" if bf16 else "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="U-Net calls timed (after one warm-up)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side = 64  # 512 px / the VAE's 8
    preview = LatentPreview(torch.tensor(SD15_LATENT_RGB), torch.zeros(3), "sd15")
    latents = torch.randn(4, side, side)
    rgb_s, _ = median_time(lambda: preview.image(latents), repeats=200, warmup=5)
    served_s, _ = median_time(lambda: png_bytes(preview.image(latents)), repeats=200, warmup=5)
    step_s, precision = unet_call_seconds(side, args.repeats, args.smoke)
    rows = [
        ["preview: latents -> 64x64 RGB (4x3 map)", rgb_s * 1e3, rgb_s / step_s * 100],
        ["preview as the app serves it (+ PNG encode)", served_s * 1e3, served_s / step_s * 100],
        [f"one CFG U-Net call, {precision}{' (smoke U-Net)' if args.smoke else ''}", step_s * 1e3, 100.0],
    ]
    report = (
        f"Step preview vs a denoising step at 512 px (64x64 latents), {cpu_name()}, {args.threads} thread(s); "
        f"medians of 200 previews and {args.repeats} U-Net calls.\n\n"
        + table(["work", "ms (median)", "% of a step"], rows)
        + f"\n\nA preview costs {served_s / step_s * 100:.4f}% of a step ({step_s / served_s:,.0f}x less).\n"
    )
    print(report)
    data = {"preview_rgb_s": rgb_s, "preview_png_s": served_s, "unet_cfg_call_s": step_s, "precision": precision,
            "preview_fraction_of_step": served_s / step_s, "threads": args.threads, "smoke": args.smoke}  # fmt: skip
    out_dir = args.out_dir or (Path("/tmp/ldm-bench-smoke") if args.smoke else None)
    for path in write_results("preview_cost", report, data, out_dir=out_dir):
        print(path)


if __name__ == "__main__":
    main()
