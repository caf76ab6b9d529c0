"""`evaluate(cfg)`: the fine-tuned text encoder against the base model's own, on held-out captions.

Both variants render the same prompts with the same seeds (prompt i: seed + i) through
`ldm.generation.pipeline.generate`, one model in memory at a time; the metrics then run on the images, one CLIP
backbone in memory at a time.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from ldm.data.layouts import SPLITS
from ldm.errors import expect, is_int
from ldm.evaluation import metrics
from ldm.evaluation.adherence import Judge, adherence, load_judge
from ldm.evaluation.backbones import check_backbone, load_backbone
from ldm.evaluation.held_out import HeldOut, load_held_out, pil_to_uint8
from ldm.evaluation.report import format_table, run_folder, side_by_side, write_json
from ldm.export.model_card import refresh_model_card
from ldm.generation.checkpoints import build_model, read_checkpoint
from ldm.generation.engine import install_engine
from ldm.generation.loading import prepare_for_inference, resolve_device, set_threads
from ldm.generation.pipeline import encode_prompts, generate
from ldm.generation.settings import Limits, SampleSettings, validate_settings
from ldm.training.checkpoint_fit import same_source
from ldm.training.module import TextEncoderFineTuner

EMBED_BATCH = 16
OPTIMISED_NOTE = "optimised by training, not independent: the reward model of objective=reward"


def _is_int(value: Any, minimum: int) -> bool:
    return is_int(value) and value >= minimum


def validate_eval_config(cfg: DictConfig) -> None:
    """The evaluation's own keys (sampling keys are checked by `validate_settings`), before any model loads."""
    forms = "a .ckpt, final_model/final_weights.pt or final_model/ written by train.py"
    expect(cfg.checkpoint is not None, "checkpoint", None, f"the checkpoint to evaluate: {forms}")
    expect(Path(cfg.checkpoint).exists(), "checkpoint", cfg.checkpoint, f"an existing file or folder: {forms}")
    expect(_is_int(cfg.seed, 0), "seed", cfg.seed, "an integer ≥ 0 (fixed seeds: prompt i uses seed + i)")
    p = cfg.prompts
    expect(p.split in SPLITS, "prompts.split", p.split, f"one of {', '.join(SPLITS)}")
    expect(_is_int(p.count, 2), "prompts.count", p.count, "an integer ≥ 2 (a Fréchet distance needs 2 images per set)")
    expect(_is_int(p.caption, 0), "prompts.caption", p.caption, "an integer ≥ 0 (which of an image's captions)")
    f = cfg.fid
    expect(
        f.inception in metrics.INCEPTION_MODES,
        "fid.inception",
        f.inception,
        f"one of {', '.join(metrics.INCEPTION_MODES)}",
    )
    expect(
        f.real_images is None or _is_int(f.real_images, 2),
        "fid.real_images",
        f.real_images,
        "null (all) or an integer ≥ 2",
    )
    expect(isinstance(f.clip, bool), "fid.clip", f.clip, "true or false")
    backbones = cfg.backbones
    expect(
        bool(backbones) and all(isinstance(v, str) and v for v in backbones.values()),
        "backbones",
        OmegaConf.to_container(backbones) if backbones is not None else None,
        "a mapping name -> CLIP hub id or folder (at least one)",
    )
    expect(_is_int(cfg.grid_prompts, 0), "grid_prompts", cfg.grid_prompts, "an integer ≥ 0")


def base_model_config(model_cfg: DictConfig, pretrained: str, revision: str | None) -> DictConfig:
    """The base model as it is: its own text encoder, no projection, its own prediction type."""
    cfg = model_cfg.copy()
    cfg.pretrained, cfg.revision = pretrained, revision
    cfg.text_encoder, cfg.projection, cfg.prediction_type = None, False, None
    return cfg


def render(
    model: TextEncoderFineTuner,
    cfg: DictConfig,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    label: str,
    checkpoint: str | None,
) -> list[Image.Image]:
    """One image per prompt with its own seed (one `generate` call each, so a seed never depends on batching)."""
    images = []
    for prompt, seed in tqdm(list(zip(prompts, seeds, strict=True)), desc=f"generating ({label})", unit="prompt"):
        settings = SampleSettings.from_config(cfg, [prompt], seed=seed, num_images=1, batch_size=1)
        images += generate(model, settings, checkpoint=checkpoint)
    return images


@torch.no_grad()
def conditioning(model: TextEncoderFineTuner, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) U-Net conditioning in fp32 on the CPU, and (B, L) masks of each prompt's own tokens."""
    chunks = [
        encode_prompts(model, prompts[i : i + EMBED_BATCH]).float().cpu() for i in range(0, len(prompts), EMBED_BATCH)
    ]
    tokenizer = model.tokenizer
    mask = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).attention_mask
    return torch.cat(chunks), mask


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def score_images(
    cfg: DictConfig,
    held_out: HeldOut,
    images: dict[str, list[Image.Image]],
    inception: torch.nn.Module | None,
    skipped: str | None,
    device: torch.device,
    optimised: Sequence[str] = (),
) -> dict[str, Any]:
    """CLIP score and fd_clip per backbone (independent ones first, `optimised` ones marked), then Inception
    FID (or why it was skipped)."""
    fakes = {variant: pil_to_uint8(imgs) for variant, imgs in images.items()}  # (N, 3, H, W) uint8
    size = min(fakes["base"].shape[-2:])
    real_limit = cfg.fid.real_images

    def real() -> Any:
        return held_out.real_images(size, real_limit, metrics.METRIC_BATCH)

    n_real = len(held_out.source) if real_limit is None else min(real_limit, len(held_out.source))
    result: dict[str, Any] = {"clip_score": {}, "fd_clip": {}}
    ordered = sorted(cfg.backbones.items(), key=lambda item: item[0] in optimised)  # stable: config order kept
    for name, source in ordered:
        adapter, processor = load_backbone(source)
        adapter.to(device)
        result["clip_score"][name] = {"backbone": source}
        if name in optimised:
            result["clip_score"][name]["optimised_by_training"] = OPTIMISED_NOTE
        for variant, pixels in fakes.items():
            result["clip_score"][name][variant] = metrics.clip_score(
                adapter, processor, pixels, held_out.prompts, device
            )
        if cfg.fid.clip:
            distances = metrics.frechet_distances(metrics.clip_frechet(adapter, processor), real(), fakes, device)
            result["fd_clip"][name] = {"backbone": source, "real_images": n_real, **distances}
            if name in optimised:
                result["fd_clip"][name]["optimised_by_training"] = OPTIMISED_NOTE
        del adapter, processor
        _free(device)
    if inception is None:
        result["fid_inception"] = {"skipped": skipped}
    else:
        result["fid_inception"] = {"real_images": n_real, **metrics.frechet_distances(inception, real(), fakes, device)}
    if not cfg.fid.clip:
        del result["fd_clip"]
    return result


def optimised_backbones(backbones: Mapping[str, str], objective: Mapping[str, Any] | None) -> list[str]:
    """The backbones training itself maximised (`objective=reward reward=clip` with that CLIP model).

    Why: a score from the model that was the training target grades the run's own homework; the report marks
    it "optimised by training, not independent" and leads with the others.
    """
    if not objective or objective.get("reward") != "ClipReward":
        return []
    return [name for name, source in backbones.items() if same_source(str(source), str(objective["reward_model"]))]


@dataclass
class Variant:
    """What one model produced: an image per prompt and the conditioning it gave each prompt."""

    images: list[Image.Image]
    conditioning: torch.Tensor  # (N, L, D) fp32
    mask: torch.Tensor  # (N, L) 1 on each prompt's own tokens
    seconds: float


def run_variant(
    model: TextEncoderFineTuner, cfg: DictConfig, prompts: Sequence[str], seeds: Sequence[int], **render_args: Any
) -> Variant:
    """Conditioning and images of one model, made ready for inference on `cfg.device`."""
    start = time.perf_counter()
    prepare_for_inference(model, resolve_device(cfg.device), cfg.attention_slicing)
    embeddings, mask = conditioning(model, prompts)
    install_engine(model, cfg, resolve_device(cfg.device))  # both variants share one engine: the same base
    images = render(model, cfg, prompts, seeds, **render_args)
    return Variant(images, embeddings, mask, time.perf_counter() - start)


def render_both(
    cfg: DictConfig, prompts: Sequence[str], seeds: Sequence[int], base_override: bool
) -> tuple[dict[str, Variant], dict[str, Any]]:
    """The fine-tuned model, then the base it was trained from, one in memory at a time.

    Returns ({"base": ..., "finetuned": ...}, what the base is).
    """
    weights = read_checkpoint(cfg.checkpoint)
    model = build_model(cfg.model, weights, base_override=base_override)
    info = {
        "base_model": str(model.hparams.pretrained),
        "revision": model.hparams.revision,
        "trainable": list(model.trainable_names),
        "objective": weights.meta["objective"],
    }
    tuned = run_variant(model, cfg, prompts, seeds, label="fine-tuned", checkpoint=str(cfg.checkpoint))
    del model
    _free(resolve_device(cfg.device))
    model = build_model(base_model_config(cfg.model, info["base_model"], info["revision"]))
    base = run_variant(model, cfg, prompts, seeds, label="base model", checkpoint=None)
    return {"base": base, "finetuned": tuned}, info


def write_outputs(
    out_dir: Path, report: dict[str, Any], prompts: Sequence[str], seeds: Sequence[int], images: dict, n_grid: int
) -> dict[str, str]:
    """eval.json and, for the first `n_grid` prompts, eval_grid.png; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": str(out_dir / "eval.json")}
    if n_grid:
        grid = side_by_side(prompts[:n_grid], seeds[:n_grid], {v: imgs[:n_grid] for v, imgs in images.items()})
        grid.save(out_dir / "eval_grid.png")
        files["grid"] = str(out_dir / "eval_grid.png")
    write_json(out_dir / "eval.json", {**report, "files": files})
    return files


def evaluate(cfg: DictConfig, *, base_override: bool = False) -> dict[str, Any]:
    """Check, render, score, write; returns the report of `<out_dir>/eval.json` plus the printed `table`."""
    start = time.perf_counter()
    validate_eval_config(cfg)
    held_out = load_held_out(cfg.data, cfg.prompts.split, cfg.prompts.count, cfg.prompts.caption)
    prompts = held_out.prompts
    seeds = [cfg.seed + i for i in range(len(prompts))]
    validate_settings(SampleSettings.from_config(cfg, prompts, num_images=1, batch_size=1), Limits(**cfg.limits))
    judge: Judge | None = None if cfg.judge is None else load_judge(cfg.judge)
    for name, source in cfg.backbones.items():
        check_backbone(name, source)
    inception, skipped = metrics.inception_frechet(cfg.fid.inception, cfg.fid.inception_weights)  # `on`: fail now
    device = resolve_device(cfg.device)
    set_threads(cfg.threads)

    variants, info = render_both(cfg, prompts, seeds, base_override)
    images = {name: v.images for name, v in variants.items()}
    t0 = time.perf_counter()
    optimised = optimised_backbones(cfg.backbones, info["objective"])
    scores = score_images(cfg, held_out, images, inception, skipped, device, optimised)
    base, tuned = variants["base"], variants["finetuned"]
    scores["embedding_drift"] = {
        **metrics.embedding_drift(base.conditioning, tuned.conditioning, base.mask * tuned.mask),
        "tokens": "each prompt's own tokens (start to end token), U-Net conditioning",
    }
    if judge is not None:
        scores["adherence"] = adherence(judge, prompts, seeds, images)
    report = {
        "checkpoint": str(cfg.checkpoint),
        **info,
        "prompts": {
            "source": held_out.description,
            "count": len(prompts),
            "caption": cfg.prompts.caption,
            "texts": list(prompts),
        },
        "sampling": {
            "scheduler": cfg.scheduler,
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale,
            "negative_prompt": cfg.negative_prompt or "",
            "size": list(base.images[0].size),
            "seed": cfg.seed,
            "seeds": "prompt i uses seed + i, in both variants",
            "device": str(device),
        },
        "metrics": scores,
        "seconds": {
            "generate_finetuned": tuned.seconds,
            "generate_base": base.seconds,
            "metrics": time.perf_counter() - t0,
            "total": time.perf_counter() - start,
        },
    }
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else run_folder(cfg.checkpoint)
    report["files"] = write_outputs(out_dir, report, prompts, seeds, images, min(cfg.grid_prompts, len(prompts)))
    refresh_model_card(out_dir / "final_model")  # the run's card takes the new figures, if the run has one
    report["table"] = format_table(report)
    return report
