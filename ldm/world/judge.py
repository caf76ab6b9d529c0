"""The attribute classifier that judges generated images: a small CNN with one head per attribute.

Why it must pass a check first: adherence is only as good as its judge. It is trained on renders (labels
parsed from the world's captions, so the Flickr8k files are the only source of truth) and accepted only
if it reaches `min_accuracy` per attribute on held-out renders AND on their VAE reconstructions, the
closest thing to a generated image whose answer is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn
from transformers import CLIPTokenizer

from ldm.assets import CLIP_TOKENIZER_DIR
from ldm.world.vae_module import configure_optimizers
from ldm.world.vocab import ATTRIBUTES, VALUES, parse_caption


class AttributeCNN(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> {attribute: (B, n_values) logits}. Flattened, not pooled: position matters."""

    def __init__(self, width: int, image_size: int) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:  # BatchNorm: 100% on renders in 300 steps, not 400+
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        cells = (image_size // 8) ** 2
        self.features = nn.Sequential(
            *conv(3, width), *conv(width, width), nn.MaxPool2d(2), *conv(width, 2 * width), nn.MaxPool2d(2),
            *conv(2 * width, 2 * width), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * cells, 128), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({a: nn.Linear(128, len(VALUES[a])) for a in ATTRIBUTES})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.features(pixels)  # (B, 128)
        return {a: head(hidden) for a, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """{attribute: (B,) value indices}."""
        return {a: logits.argmax(1) for a, logits in self(pixels).items()}


def caption_labels(captions: Iterable[str]) -> torch.Tensor:
    """(B, 3) value indices parsed from captions of either vocabulary (a caption that names none fails)."""
    rows = []
    for caption in captions:
        parsed = parse_caption(caption)
        if parsed is None:
            raise ValueError(f"caption {caption!r} names no shape, colour and position of the world")
        rows.append([VALUES[a].index(parsed[1][a]) for a in ATTRIBUTES])
    return torch.tensor(rows)


def accuracy(predicted: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Per-attribute share of `predicted` equal to `labels` (B, 3)."""
    return {a: float((predicted[a].cpu() == labels[:, k]).float().mean()) for k, a in enumerate(ATTRIBUTES)}


def jitter_colours(pixels: torch.Tensor, amount: float) -> torch.Tensor:
    """Per image: saturation x U[1-2a, 1+a], brightness x U[1-a, 1+a], each channel + U[-a/2, a/2] (of the
    0..1 range); (B, 3, H, W) in [-1, 1]. At a <= 0.2 the six named colours stay far apart."""
    if amount <= 0:
        return pixels
    b, device = len(pixels), pixels.device

    def uniform(low: float, high: float, channels: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, channels, 1, 1, device=device)

    rgb = (pixels + 1) / 2
    grey = rgb.mean(1, keepdim=True)
    rgb = grey + (rgb - grey) * uniform(1 - 2 * amount, 1 + amount)
    rgb = rgb * uniform(1 - amount, 1 + amount) + uniform(-amount / 2, amount / 2, 3)
    return rgb.clamp(0, 1) * 2 - 1


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """VAE round trip with the posterior mean, clamped to the pixel range."""
    return vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)


class JudgeModule(L.LightningModule):
    """Trains `AttributeCNN` with cross-entropy per attribute on captioned renders.

    Augmentation, because generated images are not renders: Gaussian noise, a light blur, (with
    probability `recon_prob`) the frozen stage-1 VAE's reconstruction instead of the render, and colour
    jitter (brightness, saturation, a shift per channel, up to `colour_jitter`): a generated yellow is often
    paler than the render's and a blue a little violet, and a judge that knows only the exact render
    colours calls them white and purple where a person would not.
    """

    def __init__(
        self,
        *,
        width: int,
        image_size: int,
        vae: str | None,
        recon_prob: float,
        noise_std: float,
        colour_jitter: float,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.classifier = AttributeCNN(width, image_size)
        self.vae = None if vae is None else AutoencoderKL.from_pretrained(vae).requires_grad_(False).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER_DIR)  # the DataModule's; captions -> labels
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def train(self, mode: bool = True) -> JudgeModule:
        """The VAE is a fixed augmentation: keep it in eval whatever Lightning asks."""
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if self.vae is not None and hp.recon_prob > 0:
            pick = torch.rand(len(pixels), device=pixels.device) < hp.recon_prob
            if pick.any():
                pixels = pixels.clone()
                pixels[pick] = reconstruct(self.vae, pixels[pick])
        blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        mix = torch.rand(len(pixels), 1, 1, 1, device=pixels.device) * 0.5  # 0..50% blur per image
        pixels = jitter_colours(pixels * (1 - mix) + blurred * mix, hp.colour_jitter)
        return pixels + hp.noise_std * torch.randn_like(pixels)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = caption_labels(batch["captions"]).to(self.device)
        logits = self.classifier(self._augment(batch["pixel_values"]))
        loss = sum(F.cross_entropy(logits[a], labels[:, k]) for k, a in enumerate(ATTRIBUTES))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        labels = caption_labels(batch["captions"])
        pixels = batch["pixel_values"]
        logits = self.classifier(pixels)
        loss = sum(F.cross_entropy(logits[a], labels[:, k].to(self.device)) for k, a in enumerate(ATTRIBUTES))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(labels))
        for source, images in (("renders", pixels), ("reconstructions", None)):
            if images is None:
                if self.vae is None:
                    continue
                images = reconstruct(self.vae, pixels)
            for attr, value in accuracy(self.classifier.predict(images), labels).items():
                self.log(f"val/{source}/{attr}", value, batch_size=len(labels))

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.lr_scheduler_factory)
