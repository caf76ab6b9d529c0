"""End-of-fit exports of the shapes-world stages into fixed folders that the next stage loads.

Why fixed folders (under `paths.cache_dir`, not the run folder): each stage is the next one's input, and
`ldm.world.stages` skips a stage whose folder is complete. Every folder is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import load_file, save_file

from ldm.errors import UserError
from ldm.files import write_folder
from ldm.training.module import TextEncoderFineTuner
from ldm.world.judge import AttributeCNN, JudgeModule, accuracy, caption_labels, reconstruct
from ldm.world.pipeline import save_pipeline
from ldm.world.vae_module import VAEModule
from ldm.world.vocab import ATTRIBUTES

JUDGE_REPORT = "accuracy.json"


class ExportVAE(L.Callback):
    """Stage 1: `save_pretrained` the VAE with `scaling_factor` = 1 / std of the training latents."""

    def __init__(self, dirpath: str, scale_batches: int) -> None:
        self.dirpath = dirpath
        self.scale_batches = scale_batches

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, VAEModule) or trainer.sanity_checking:
            return
        pl_module.eval()
        std = pl_module.latent_std(trainer.datamodule.train_dataloader(), self.scale_batches)
        pl_module.vae.register_to_config(scaling_factor=1.0 / std)
        write_folder(
            self.dirpath, lambda tmp: pl_module.vae.save_pretrained(tmp, safe_serialization=True), replace=True
        )


class ExportPipeline(L.Callback):
    """Stage 2: the trained U-Net and text encoder with the frozen VAE, tokenizer and scheduler as one
    diffusers folder (model_index.json, vae/, unet/, text_encoder/, tokenizer/, scheduler/)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, TextEncoderFineTuner) or trainer.sanity_checking:
            return
        m = pl_module
        save_pipeline(
            self.dirpath,
            vae=m.vae,
            unet=m.unet,
            text_encoder=m.text_encoder,
            tokenizer=m.tokenizer,
            scheduler=m.noise_scheduler,
        )


class JudgeNotGoodEnough(UserError, RuntimeError):
    """The classifier missed the accuracy a judge needs; adherence would measure the judge, not the model."""


@torch.no_grad()
def judge_accuracy(judge: JudgeModule, loader: Any) -> dict[str, dict[str, float]]:
    """Per-attribute accuracy on the renders of `loader` and on their VAE reconstructions."""
    judge.eval()
    sums = {"renders": dict.fromkeys(ATTRIBUTES, 0.0), "reconstructions": dict.fromkeys(ATTRIBUTES, 0.0)}
    count = 0
    for batch in loader:
        labels = caption_labels(batch["captions"])
        pixels = batch["pixel_values"].to(judge.device)
        for source, images in (("renders", pixels), ("reconstructions", reconstruct(judge.vae, pixels))):
            for attr, acc in accuracy(judge.classifier.predict(images), labels).items():
                sums[source][attr] += acc * len(labels)
        count += len(labels)
    return {source: {a: v / count for a, v in accs.items()} for source, accs in sums.items()}


class ExportJudge(L.Callback):
    """Judge: check accuracy on the held-out test split (renders and reconstructions), then save it.

    Below `min_accuracy` on any attribute it writes nothing and stops with `JudgeNotGoodEnough`.
    """

    def __init__(self, dirpath: str, min_accuracy: float) -> None:
        self.dirpath = dirpath
        self.min_accuracy = min_accuracy

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, JudgeModule) or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        datamodule.setup("test")
        result = judge_accuracy(pl_module, datamodule.test_dataloader())
        report = {
            "accuracy": result,
            "min_accuracy": self.min_accuracy,
            "test_images": len(datamodule.splits["test"]),
            "width": pl_module.hparams.width,
            "image_size": pl_module.hparams.image_size,
        }
        worst = min(v for accs in result.values() for v in accs.values())
        if worst < self.min_accuracy:
            raise JudgeNotGoodEnough(
                f"the attribute classifier reached {json.dumps(result)} on held-out images: below "
                f"{self.min_accuracy:.0%} on some attribute, so it is not used as a judge (train it longer)"
            )

        def save(tmp: Path) -> None:
            save_file(pl_module.classifier.state_dict(), tmp / "model.safetensors")
            (tmp / JUDGE_REPORT).write_text(json.dumps(report, indent=2) + "\n")

        write_folder(self.dirpath, save, replace=True)


def load_judge(path: str | Path) -> tuple[AttributeCNN, dict[str, Any]]:
    """The saved classifier (eval mode) and its accuracy report; only judges that passed are ever saved."""
    path = Path(path)
    report = json.loads((path / JUDGE_REPORT).read_text())
    model = AttributeCNN(report["width"], report["image_size"])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval(), report
