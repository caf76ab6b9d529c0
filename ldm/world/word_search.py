"""Stage 3's start for the new words: each one's embedding row copied from the known word that best fits its captions.

A callback, run when training starts: the adherence report has judged the base model as stage 2 left it by
then (its `on_fit_start`), so the search counts as part of stage 3, and a resumed run keeps its trained rows.

Why: stage 2 trains its text encoder from scratch on base captions, so a word that only new captions use keeps
the random row it was initialised with, which a real pretrained encoder never has. From some of those rows the
noise-prediction loss never finds the word's meaning: on world seed 1 "toward the west" stayed at chance after
stage 3 although copying the row of "left" into it reads 100% (docs/preservation.md). Textual inversion asks the
user for an `initializer_token`; this picks it from the training data instead. For each new word, in turn, it
tries the rows of every token base captions use (and the word's own row) on captions that hold the word, and
keeps the row under which the frozen U-Net predicts those images' noise best. The loss is the training loss,
at fixed noise and timesteps in the noisier half of the schedule, where the caption decides what is drawn.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from PIL import Image

from ldm.data.images import ImageTransform
from ldm.data.layouts import Sample, load_folder
from ldm.errors import ConfigError
from ldm.generation.pipeline import native_size
from ldm.world.vocab import BASE, NEW, caption_token_ids

log = logging.getLogger(__name__)


def new_word_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of the new vocabulary's attribute words that no base caption holds (not template fillers)."""
    base_ids = caption_token_ids(BASE, tokenizer)
    words = [phrase for values in NEW.words.values() for phrase in values.values()]
    ids = {i for phrase in words for i in tokenizer(phrase, add_special_tokens=False).input_ids}
    return sorted(ids - base_ids)


class NewWordSearch(L.Callback):
    """`search_new_word_rows` on the module when training starts, on captions of the training folder.

    root, layout, val_fraction, split_seed: the training folder as the DataModule reads it (conf/experiment/
    shapes.yaml passes data's). It refuses a separately given text encoder (stage 3's export, which the
    reward stage refines, trained those rows already) and a LoRA adapter (peft keeps its own copy of the rows
    it trains), and it does nothing when a run resumes from a checkpoint.
    """

    def __init__(
        self,
        *,
        root: str,
        layout: str,
        val_fraction: float,
        split_seed: int,
        captions_per_word: int = 32,
        seed: int = 0,
        min_evidence: float = 0.0,
    ) -> None:
        if captions_per_word < 1:
            raise ConfigError(f"callbacks.new_word_search.captions_per_word={captions_per_word!r}: expected >= 1")
        if not min_evidence >= 0:
            raise ConfigError(f"callbacks.new_word_search.min_evidence={min_evidence!r}: expected a number >= 0")
        self.folder = {"root": root, "layout": layout, "val_fraction": val_fraction, "split_seed": split_seed}
        self.captions_per_word, self.seed, self.min_evidence = captions_per_word, seed, min_evidence
        self.chosen: dict[str, str] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse what the search would break before anything is rendered or trained."""
        given = pl_module.hparams.get("text_encoder")
        if given is not None:
            raise ConfigError(
                f"callbacks.new_word_search with model.text_encoder={given!r}: expected model.text_encoder=null "
                "(a given encoder trained the new words' rows already) or callbacks.new_word_search=null"
            )
        if getattr(pl_module, "adapter", None) is not None:
            raise ConfigError(
                "callbacks.new_word_search with a LoRA adapter: expected model.adapter=null or "
                "callbacks.new_word_search=null (peft trains its own copy of the rows)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            log.info("new words: resumed from %s, the rows stay as trained", trainer.ckpt_path)
            return
        samples = training_samples(**self.folder)
        self.chosen = search_new_word_rows(
            pl_module, samples, captions_per_word=self.captions_per_word, seed=self.seed, min_evidence=self.min_evidence
        )


def training_samples(root: str | Path, layout: str, *, val_fraction: float, split_seed: int) -> list[Sample]:
    """The training split of the folder stage 3 trains on (the world's `mix` folder), as the DataModule reads it."""
    if not Path(root).is_dir():
        raise ConfigError(
            f"callbacks.new_word_search reads the training folder {str(root)!r}, which does not exist: expected the "
            "world written by the earlier stages (`make demo`, or `python train.py experiment=shapes_vae` first)"
        )
    return load_folder(Path(root), layout, val_fraction=val_fraction, seed=split_seed, splits=["train"])["train"]


def caption_batches(
    module: Any, samples: Sequence[Sample], word_ids: Sequence[int], *, captions_per_word: int, seed: int
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{word id: (pixels, token ids)} of up to `captions_per_word` training captions that hold the word, drawn
    with `seed`; a word no caption holds is left out."""
    tokenizer = module.tokenizer
    transform = ImageTransform(native_size(module), random_crop=False, random_flip=False)
    pairs = [(s.image, c) for s in samples for c in s.captions]
    held = [set(ids) for ids in tokenizer([c for _, c in pairs], add_special_tokens=False).input_ids]
    rng = random.Random(seed)
    batches = {}
    for word_id in word_ids:
        holding = [pair for pair, ids in zip(pairs, held, strict=True) if word_id in ids]
        if not holding:
            continue
        drawn = rng.sample(holding, min(captions_per_word, len(holding)))
        pixels = torch.stack([transform(Image.open(path)) for path, _ in drawn])
        ids = tokenizer(
            [c for _, c in drawn], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        batches[word_id] = (pixels, ids)
    return batches


@torch.no_grad()
def search_new_word_rows(
    module: Any, samples: Sequence[Sample], *, captions_per_word: int = 32, seed: int = 0, min_evidence: float = 0.0
) -> dict[str, str]:
    """Copy into each new word's row the candidate row that lowers its captions' loss most; {word: source}.

    `module` is a TextEncoderFineTuner (its frozen VAE, U-Net and scheduler, its tokenizer and encode_text).
    Words are searched one after the other in token-id order, each with the rows chosen before it in place.
    Every candidate of a word is scored on the same latents, noise and timesteps, so the choice compares like
    with like. The best candidate replaces the word's own row only if it beats it caption by caption with a
    paired t statistic of at least `min_evidence` (`improvement`): a loss a few per cent lower on 32 captions is
    within the noise of the draw, and a row copied on such evidence gives the word another word's meaning to
    unlearn (world seed 0: "core" took the row of "yellow" at t = 0.8).
    """
    tokenizer, embeddings = module.tokenizer, module.text_encoder.get_input_embeddings().weight
    candidates = sorted(caption_token_ids(BASE, tokenizer))
    batches = caption_batches(
        module, samples, new_word_token_ids(tokenizer), captions_per_word=captions_per_word, seed=seed
    )
    chosen: dict[str, str] = {}
    for word_id, (pixels, ids) in batches.items():
        score = loss_of_rows(module, pixels, ids, seed)
        own, own_losses = embeddings[word_id].clone(), score()
        best_losses, best_id = own_losses, None
        for candidate in candidates:
            embeddings[word_id] = embeddings[candidate]
            losses = score()
            if losses.mean() < best_losses.mean():
                best_losses, best_id = losses, candidate
        evidence = improvement(own_losses, best_losses)
        word, best = tokenizer.decode([word_id]), "(its own row)" if best_id is None else tokenizer.decode([best_id])
        copied = best_id is not None and evidence >= min_evidence
        embeddings[word_id] = embeddings[best_id] if copied else own
        chosen[word] = best if copied else "(its own row)"
        log.debug("new word %s: best %s, loss %.4f -> %.4f, t %.1f: %s", word, best, own_losses.mean(),
                  best_losses.mean(), evidence, chosen[word])  # fmt: skip
    log.info("new words start from: %s", ", ".join(f"{w} <- {s}" for w, s in chosen.items()))
    return chosen


def improvement(before: torch.Tensor, after: torch.Tensor) -> float:
    """Paired t statistic of the per-caption loss falling from `before` to `after` (positive: it fell)."""
    fall = (before - after).double()
    if len(fall) < 2:
        return float("inf") if float(fall.sum()) > 0 else 0.0
    spread = float(fall.std()) / len(fall) ** 0.5
    return float("inf") if spread == 0 and float(fall.mean()) > 0 else float(fall.mean()) / max(spread, 1e-12)


def loss_of_rows(module: Any, pixels: torch.Tensor, input_ids: torch.Tensor, seed: int):
    """A function that scores the text encoder as it is when called: the training loss (v or epsilon) of the
    frozen U-Net per caption (a tensor of len(pixels)), at latents, noise and timesteps fixed by `seed` once
    for every call."""
    generator = torch.Generator().manual_seed(seed)
    posterior = module.vae.encode(pixels.to(module.vae.device, module.vae.dtype)).latent_dist
    latents = posterior.sample(generator).float() * module.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    steps = module.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(steps // 2, steps, (len(latents),), generator=generator)
    device = module.unet.device
    latents, noise, timesteps, input_ids = (t.to(device) for t in (latents, noise, timesteps, input_ids))

    def score() -> torch.Tensor:
        return module.denoising_loss(latents, noise, timesteps, input_ids, per_sample=True).cpu()

    return score
