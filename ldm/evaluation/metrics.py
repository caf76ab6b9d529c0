"""The numbers of an evaluation: CLIP score, Fréchet distances against real images, prompt-embedding drift.

FID: torchmetrics' `FrechetInceptionDistance` with its default Inception network needs torch-fidelity
(which pulls in torchvision) and Inception weights that torch-fidelity downloads. Where either is missing,
FID is skipped with the reason (`fid.inception=auto`), or stops the run (`on`). `fd_clip` is the same
Fréchet distance on CLIP image features (torchmetrics' `feature=<nn.Module>`): not comparable with
published FIDs, but it runs everywhere and compares base and fine-tuned on equal terms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ldm.errors import UserError
from ldm.evaluation.backbones import ClipAdapter, ClipImageFeatures

INCEPTION_MODES = ("auto", "on", "off")
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
METRIC_BATCH = 16  # images per CLIP / Inception forward


class MetricUnavailableError(UserError, RuntimeError):
    """A metric the config requires (`fid.inception=on`) can't run here; the message says why."""


def _batches(items: Sequence[Any], size: int = METRIC_BATCH) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


@torch.no_grad()
def clip_score(
    adapter: ClipAdapter, processor: Any, images: torch.Tensor, prompts: Sequence[str], device: torch.device
) -> float:
    """torchmetrics' CLIPScore of uint8 images (B, 3, H, W): 100 cos(image, prompt) averaged, floored at 0.

    CLIPScore runs the backbone where the images are, so they go to `device`.
    """
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (adapter, processor))
    for start in range(0, len(prompts), METRIC_BATCH):
        batch = images[start : start + METRIC_BATCH].to(device)
        metric.update(list(batch), list(prompts[start : start + METRIC_BATCH]))
    return float(metric.compute())


def frechet_distances(
    metric: nn.Module, real: Iterable[torch.Tensor], fakes: dict[str, torch.Tensor], device: torch.device
) -> dict[str, float]:
    """Fréchet distance of each set in `fakes` to `real` (uint8 batches), real features computed once."""
    metric = metric.to(device)
    for batch in real:
        metric.update(batch.to(device), real=True)
    result = {}
    for name, images in fakes.items():
        for batch in _batches(images):
            metric.update(batch.to(device), real=False)
        result[name] = float(metric.compute())
        metric.reset()  # fake statistics only: reset_real_features=False keeps the real ones
    return result


def clip_frechet(adapter: ClipAdapter, processor: Any) -> nn.Module:
    """A torchmetrics FID over this backbone's image features (fd_clip)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=ClipImageFeatures(adapter, processor), reset_real_features=False)


def inception_frechet(mode: str, weights: str | None) -> tuple[nn.Module | None, str | None]:
    """(torchmetrics' Inception FID, None), or (None, why it is skipped); `mode=on` raises instead of skipping."""
    if mode == "off":
        return None, "fid.inception=off"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(
            feature=2048, reset_real_features=False, feature_extractor_weights_path=weights
        )
        return metric, None
    except ModuleNotFoundError:
        reason = (
            "torch-fidelity is not installed (`pip install torch-fidelity`; it pulls in torchvision, which must "
            "be the build that matches the installed torch)"
        )
    except (OSError, RuntimeError, ValueError) as err:  # weights not downloadable/readable, torchvision mismatch
        reason = (
            f"the Inception network could not be loaded ({type(err).__name__}: {err}); offline, set "
            f"fid.inception_weights=PATH to a local {INCEPTION_WEIGHTS}"
        )
    if mode == "on":
        raise MetricUnavailableError(f"fid.inception=on but {reason}")
    return None, reason


@torch.no_grad()
def embedding_drift(base: torch.Tensor, tuned: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean cosine drift 1 - cos(base, tuned) of the U-Net conditioning, per token over each prompt's own
    tokens (start to end token: padding would dilute it), averaged per prompt, then over prompts.

    base, tuned: (B, L, D) conditioning; mask: (B, L), 1 on a prompt's own tokens.
    """
    cos = torch.nn.functional.cosine_similarity(base.float(), tuned.float(), dim=-1)  # (B, L)
    mask = mask.to(cos.dtype)
    per_prompt = (cos * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,)
    similarity = float(per_prompt.mean())
    return {"mean_cosine_drift": 1.0 - similarity, "mean_cosine_similarity": similarity}
