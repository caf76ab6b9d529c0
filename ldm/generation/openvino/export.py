"""torch -> OpenVINO IR for the U-Net and the VAE decoder, and nncf's int8 versions of them.

Why dynamic shapes in the IR: one export serves every image size and batch; `runtime.CompiledByShape`
reshapes a copy to static shapes before compiling. Weights are stored as fp16 for a bf16 engine (half the
file and the memory map; bf16 keeps fewer mantissa bits than fp16, so nothing is lost) and as fp32 for f32.
int8 follows optimum-intel's hybrid mode for diffusion models: the U-Net's weights and activations are
quantized (calibrated on its own denoising inputs), the VAE decoder's weights only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldm.generation.fast import DeepCache, FastSamplingError, feature_channels, feature_hook, shallow_forward

UNET_FILE, VAE_FILE, SHALLOW_FILE = "unet.xml", "vae_decoder.xml", "unet_shallow.xml"


def deep_cache_branches(unet: Any) -> range:
    """The DeepCache branches this U-Net supports (0 to the first down block's layers), empty if none."""
    try:
        DeepCache.check_supported(unet, 0)
    except FastSamplingError:
        return range(0)
    return range(len(unet.down_blocks[0].resnets) + 1)


class _UNetCall(torch.nn.Module):
    """The three tensors diffusers passes -> the noise prediction, then DeepCache's feature of each branch.

    Why the features are outputs of the one graph: a DeepCache full call must keep the feature its shallow
    calls reuse, and a second full graph would mean a second export and a second 3.4 GB copy. The features
    are tensors the U-Net computes anyway; as outputs they cost one copy of a few MB per call.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        kept: dict[int, torch.Tensor] = {}
        branches = deep_cache_branches(self.unet)
        hooks = [feature_hook(self.unet, b, lambda f, b=b: kept.__setitem__(b, f)) for b in branches]
        try:
            noise = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            for hook in hooks:
                hook.remove()
        return (noise, *(kept[b] for b in branches))


class _ShallowCall(torch.nn.Module):
    """DeepCache's shallow call of one branch: the three tensors and the kept feature -> the noise prediction."""

    def __init__(self, unet: torch.nn.Module, branch: int) -> None:
        super().__init__()
        self.unet, self.branch = unet, branch

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, feature: torch.Tensor
    ) -> torch.Tensor:
        return shallow_forward(self.unet, self.branch, sample, timestep, encoder_hidden_states, feature)


class _Decode(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def convert_unet(unet: Any, tokens: int = 77) -> Any:
    """The U-Net as an ov.Model: inputs sample (B, C, h, w), timestep (1,) float, context (B, T, D); outputs
    the noise prediction and, for each DeepCache branch b, the feature its shallow graph takes (output 1 + b).

    The token count T stays dynamic too: SD's tokenizer gives 77, the shapes world's 16, and nncf's int8
    calibration runs the IR itself at the model's own T (`tokens` is only the tracing example's).
    """
    import openvino as ov

    c, d, side = unet.config.in_channels, unet.config.cross_attention_dim, unet.config.sample_size
    example = (torch.randn(2, c, side, side), torch.tensor([500.0]), torch.randn(2, tokens, d))
    shapes = [("sample", [-1, c, -1, -1]), ("timestep", [1]), ("encoder_hidden_states", [-1, -1, d])]
    with torch.no_grad():
        return ov.convert_model(_UNetCall(unet.float().eval()), example_input=example, input=shapes)


def convert_shallow_unet(unet: Any, branch: int, tokens: int = 77) -> Any:
    """DeepCache's shallow graph for `branch`: inputs sample, timestep, context as `convert_unet`'s, and the
    kept feature (B, F, h, w), output 1 + branch of the full graph. A few percent of the U-Net's weights."""
    import openvino as ov

    c, d, side = unet.config.in_channels, unet.config.cross_attention_dim, unet.config.sample_size
    f = feature_channels(unet, branch)
    example = (torch.randn(2, c, side, side), torch.tensor([500.0]), torch.randn(2, tokens, d))
    example += (torch.randn(2, f, side, side),)
    shapes = [("sample", [-1, c, -1, -1]), ("timestep", [1]), ("encoder_hidden_states", [-1, -1, d])]
    shapes += [("feature", [-1, f, -1, -1])]
    with torch.no_grad():
        return ov.convert_model(_ShallowCall(unet.float().eval(), branch), example_input=example, input=shapes)


def convert_vae_decoder(vae: Any, side: int) -> Any:
    """The VAE decoder as an ov.Model: (B, 4, h, w) scaled latents -> (B, 3, 8h, 8w) image in [-1, 1]."""
    import openvino as ov

    c = vae.config.latent_channels
    with torch.no_grad():
        return ov.convert_model(
            _Decode(vae.float().eval()),
            example_input=(torch.randn(1, c, side, side),),
            input=[("latent", [-1, c, -1, -1])],
        )


def quantize_unet(model: Any, samples: Sequence[tuple]) -> Any:
    """nncf post-training int8 (weights and activations), its statistics from `samples` (U-Net inputs)."""
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(list(samples), lambda s: {"sample": s[0], "timestep": s[1], "encoder_hidden_states": s[2]}),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )


def compress_weights(model: Any) -> Any:
    """nncf int8 weight compression (activations stay in the float precision)."""
    import nncf

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def save(model: Any, path: Path, precision: str) -> None:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=precision == "bf16")
