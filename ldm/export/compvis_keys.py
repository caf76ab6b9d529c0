"""diffusers -> CompVis key names for SD1.x's U-Net, VAE and CLIP text encoder (the single-file layout).

Why here and not in diffusers: `diffusers.loaders.single_file_utils` only reads single files (CompVis ->
diffusers). Its tables and prefixes (`DIFFUSERS_TO_LDM_MAPPING`, `LDM_UNET_KEY`, `LDM_VAE_KEYS`,
`LDM_CLIP_PREFIX_TO_REMOVE`) are used as they are; the block renames below are the inverse of its
`convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint`, and `check_round_trip` runs those very
functions on the result, so a key this module gets wrong fails the export instead of shipping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.loaders import single_file_utils as sfu

UNET_PREFIX = sfu.LDM_UNET_KEY  # "model.diffusion_model."
VAE_PREFIX = sfu.LDM_VAE_KEYS[0]  # "first_stage_model."
TEXT_PREFIX = sfu.LDM_CLIP_PREFIX_TO_REMOVE[0]  # "cond_stage_model.transformer."
# the inverse of update_unet_resnet_ldm_to_diffusers's renames, inside a resnet only
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
UNET_RESNET |= {"time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
# the inverse of update_vae_attentions_ldm_to_diffusers's renames (the mid-block attention)
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# diffusers' reader renames resnet internals with str.replace, which leaves a diffusers name as it is: it would
# accept a key this module forgot to rename, and A1111 would not. So those names are looked for by hand.
DIFFUSERS_NAMES_LEFT = re.compile(
    rf"^{re.escape(UNET_PREFIX)}(input_blocks\.\d+\.0|output_blocks\.\d+\.0|middle_block\.[02])\."
    rf"({'|'.join(UNET_RESNET)})\.|^{re.escape(VAE_PREFIX)}.*\.conv_shortcut\."
)


class LayoutError(ValueError):
    """A model this layout can't express (not an SD1.x U-Net/VAE), or a mapping diffusers reads differently."""


def _rename_inside(rest: str, renames: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    if head == "to_out" and tail.startswith("0."):
        head, tail = "to_out.0", tail[2:]
    return f"{renames.get(head, head)}.{tail}" if tail else renames.get(head, head)


def _layers_per_block(config: Mapping[str, Any]) -> int:
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise LayoutError(f"layers_per_block={lpb!r}: the single-file layout needs one integer for every block")
    return lpb


def unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, CompVis prefix, is a resnet) for every block of a UNet2DConditionModel config."""
    lpb, blocks = _layers_per_block(config), len(config["block_out_channels"])
    out: list[tuple[str, str, bool]] = []
    for i in range(blocks):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            out += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True)]
            out += [(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False)]
        if i < blocks - 1:
            out += [(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", False)]
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            out += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True)]
            out += [(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False)]
        if i < blocks - 1:
            last = i * (lpb + 1) + lpb
            out += [(f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{last}.{2 if has_attention else 1}.", False)]
    out += [("mid_block.attentions.0.", "middle_block.1.", False)]
    out += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", True) for j in range(2)]
    return out


def unet_key(name: str, prefixes: list[tuple[str, str, bool]]) -> str:
    """One diffusers U-Net key in the CompVis layout (without `model.diffusion_model.`)."""
    top = sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if name in top:
        return top[name]
    for new, old, resnet in prefixes:
        if name.startswith(new):
            rest = name[len(new) :]
            return old + (_rename_inside(rest, UNET_RESNET) if resnet else rest)
    raise LayoutError(f"U-Net weight {name!r} has no place in the SD1.x single-file layout")


def vae_key(name: str, config: Mapping[str, Any]) -> str:
    """One diffusers AutoencoderKL key in the CompVis layout (without `first_stage_model.`)."""
    top = sfu.DIFFUSERS_TO_LDM_MAPPING["vae"]
    if name in top:
        return top[name]
    blocks = len(config["block_out_channels"])
    part, _, rest = name.partition(".")
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    for kind, ldm in (("down_blocks", "down"), ("up_blocks", "up")):
        if rest.startswith(f"{kind}."):
            index, _, inner = rest[len(kind) + 1 :].partition(".")
            level = int(index) if kind == "down_blocks" else blocks - 1 - int(index)
            inner = inner.replace("resnets.", "block.", 1)
            inner = inner.replace("downsamplers.0.", "downsample.").replace("upsamplers.0.", "upsample.")
            return f"{part}.{ldm}.{level}.{inner}"
    if rest.startswith("mid_block.resnets."):
        index, _, inner = rest[len("mid_block.resnets.") :].partition(".")
        return f"{part}.mid.block_{int(index) + 1}.{inner}"
    if rest.startswith("mid_block.attentions.0."):
        return f"{part}.mid.attn_1.{_rename_inside(rest[len('mid_block.attentions.0.') :], VAE_ATTENTION)}"
    raise LayoutError(f"VAE weight {name!r} has no place in the SD1.x single-file layout")


def with_text_model(name: str) -> str:
    """transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); the files the tools read keep the wrapper."""
    return name if name.startswith(("text_model.", "text_projection")) else f"text_model.{name}"


def text_key(name: str) -> str:
    """One CLIPTextModel key in the single-file layout (`cond_stage_model.transformer.text_model.*`)."""
    return TEXT_PREFIX + with_text_model(name)


def to_compvis(
    unet: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    vae: Mapping[str, torch.Tensor],
    vae_config: Mapping[str, Any],
    text_encoder: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The three state dicts as one CompVis-layout dict (tensors not copied; the VAE's attention 1x1 convs)."""
    prefixes = unet_prefixes(unet_config)
    out = {UNET_PREFIX + unet_key(k, prefixes): v for k, v in unet.items()}
    for name, tensor in vae.items():
        key = VAE_PREFIX + vae_key(name, vae_config)
        is_attention_weight = ".mid.attn_1." in key and key.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        )
        out[key] = tensor[:, :, None, None] if is_attention_weight and tensor.ndim == 2 else tensor
    out.update({text_key(k): v for k, v in text_encoder.items()})
    return out


def check_round_trip(
    compvis: Mapping[str, torch.Tensor],
    unet: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    vae: Mapping[str, torch.Tensor],
    vae_config: Mapping[str, Any],
) -> None:
    """Read `compvis` back with diffusers' own converters: every U-Net and VAE key and shape must come back."""
    left = sorted(k for k in compvis if DIFFUSERS_NAMES_LEFT.search(k))
    if left:
        raise LayoutError(f"{len(left)} single-file keys still carry diffusers names (e.g. {left[:3]})")
    checkpoint = dict(compvis)
    for name, ours, theirs in (
        ("U-Net", unet, sfu.convert_ldm_unet_checkpoint(checkpoint, dict(unet_config))),
        ("VAE", vae, sfu.convert_ldm_vae_checkpoint(checkpoint, dict(vae_config))),
    ):
        wrong = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
        extra = sorted(set(theirs) - set(ours))
        if wrong or extra:
            raise LayoutError(
                f"diffusers reads the single-file {name} back differently: {len(wrong)} weights missing or "
                f"reshaped (e.g. {wrong[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
            )
