"""Step previews: the denoising latents -> a small RGB image by a linear map of the latent channels.

Why a linear map and never a VAE decode: a decode at 512 px costs more than a U-Net step on a CPU
(benchmarks/results/generation_full-2026-11-27.md), while each RGB pixel of SD's VAE is close to a
fixed mix of the 4 latent values at that spot, so a (C, 3) matrix product gives a 1/8-size picture for
almost nothing (benchmarks/results/preview_cost.md). SD1.5's VAE gets the published factors (the ones ComfyUI uses);
any other VAE (the tiny and shapes-world models) gets a map fitted once, at load time, by least squares
against its own decodes of a few random latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

# rows: latent channels 0-3, columns: R, G, B (ComfyUI's `latent_formats.SD15.latent_rgb_factors`)
SD15_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_VAE = {"latent_channels": 4, "block_out_channels": (128, 256, 512, 512), "scaling_factor": 0.18215}


@dataclass(frozen=True)
class LatentPreview:
    """`rgb = latents . factors + bias`, in [-1, 1] like the VAE's output."""

    factors: torch.Tensor  # (C, 3)
    bias: torch.Tensor  # (3,)
    source: str  # "sd15" (published factors) | "fitted" (least squares at load time)

    def image(self, latents: torch.Tensor) -> Image.Image:
        """(C, h, w) latents as the denoising loop holds them (scaled) -> an h x w RGB image."""
        rgb = torch.einsum("chw,cd->hwd", latents.detach().float().cpu(), self.factors) + self.bias
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(pixels.numpy(), mode="RGB")


def is_sd15_vae(vae: Any) -> bool:
    """SD1.5's VAE layout and scale: the published factors were measured on it."""
    config = vae.config
    return (
        config.latent_channels == SD15_VAE["latent_channels"]
        and tuple(config.block_out_channels) == SD15_VAE["block_out_channels"]
        and config.scaling_factor == SD15_VAE["scaling_factor"]
    )


@torch.no_grad()
def fit_latent_rgb(vae: Any, side: int, count: int = 4, seed: int = 0) -> LatentPreview:
    """Least-squares (C + 1) x 3 map from `count` random (C, side, side) latents to their decodes,
    average-pooled to the latent grid (one RGB value per latent cell)."""
    channels = vae.config.latent_channels
    generator = torch.Generator("cpu").manual_seed(seed)
    parameter = next(vae.parameters(), None)  # None: an engine's VAE (OpenVINO) has no torch weights, takes fp32
    latents = torch.randn(count, channels, side, side, generator=generator)
    inputs = latents if parameter is None else latents.to(parameter)
    decoded = vae.decode(inputs / vae.config.scaling_factor).sample.float().cpu()
    pooled = F.adaptive_avg_pool2d(decoded, side)  # (count, 3, side, side)
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)  # (N, C + 1): a bias column
    targets = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(inputs, targets).solution  # (C + 1, 3)
    return LatentPreview(solution[:-1].contiguous(), solution[-1].contiguous(), "fitted")


def latent_preview_for(model: Any) -> LatentPreview:
    """The preview map of a loaded model: SD1.5's factors, or one fitted to its VAE (about a second)."""
    if is_sd15_vae(model.vae):
        return LatentPreview(torch.tensor(SD15_LATENT_RGB), torch.zeros(3), "sd15")
    return fit_latent_rgb(model.vae, side=min(int(model.unet.config.sample_size), 32))
