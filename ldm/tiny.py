"""Tiny random-weight SD components, written once as a real diffusers folder.

Why a folder and not objects: tests and `experiment=tiny` then load them through
`ldm.components.load_components`, the exact code path SD1.5 takes. Sizes follow diffusers' own
`get_dummy_components`, except the VAE keeps SD's 8x down-sampling (4 levels) and the text encoder
uses the real CLIP vocabulary (49,408 ids) with the offline tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.files import write_folder

# SD1.5's own scheduler config (its `scheduler/scheduler_config.json`): note clip_sample=False.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def tiny_text_encoder(hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text tower over the real vocabulary (hidden 32, or e.g. 16 for a B/32-like mismatch)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """The five components at test size, random weights, seeded."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_tiny_pretrained(path: str | os.PathLike, seed: int = 0) -> str:
    """Return `path`, writing the tiny diffusers folder there first if it is not complete yet."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        write_folder(path, lambda tmp: tiny_pipeline(seed).save_pretrained(tmp), replace=False)
    return str(path)


def ensure_tiny_text_tower(path: str | os.PathLike, hidden_size: int = 16, seed: int = 0) -> str:
    """A separate tiny CLIP text tower + tokenizer folder, narrower than the tiny U-Net's cross-attention."""
    path = Path(path)
    if not (path / "config.json").is_file():

        def save(tmp: Path) -> None:
            tiny_text_encoder(hidden_size, seed).save_pretrained(tmp)
            CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR).save_pretrained(tmp)

        write_folder(path, save, replace=False)
    return str(path)
