"""Config checks and resolvers shared by the entry points.

Why checks here: a bad value should stop the run before a 3.4 GB model loads, naming the key and what
was expected, not surface as a shape error twenty minutes in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldm.components import check_trainable
from ldm.errors import expect, is_int, require
from ldm.tiny import ensure_tiny_pretrained

# diffusers' schedules whose shape does not depend on num_training_steps (the others decay over it)
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup", "piecewise_constant")
log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """`${tiny_pretrained:PATH}` writes the tiny random model at PATH once and returns PATH."""
    if not OmegaConf.has_resolver("tiny_pretrained"):
        OmegaConf.register_new_resolver("tiny_pretrained", ensure_tiny_pretrained)


def validate_train_config(cfg: DictConfig) -> None:
    """Check the values that would otherwise fail late, before any model loads.

    Reads no `model.pretrained` (its resolver may build a model). The DataModule checks its own other
    values when it is built.
    """
    lr = cfg.optimizer.get("lr")
    expect(isinstance(lr, int | float) and lr > 0, "optimizer.lr", lr, "a number > 0")
    data = cfg.data
    expect(
        isinstance(data.resolution, int) and data.resolution >= 8 and data.resolution % 8 == 0,
        "data.resolution",
        data.resolution,
        "a positive multiple of 8 (the VAE down-samples 8x)",
    )
    if data.layout != "hub" and not data.get("generate"):
        root = Path(data.root)
        expect(root.is_dir(), "data.root", str(data.root), "an existing Flickr8k folder (see README: Data)")
    trainer = cfg.trainer
    expect(
        isinstance(trainer.accumulate_grad_batches, int) and trainer.accumulate_grad_batches >= 1,
        "trainer.accumulate_grad_batches",
        trainer.accumulate_grad_batches,
        "an integer ≥ 1",
    )
    clip = trainer.gradient_clip_val
    expect(clip is None or clip > 0, "trainer.gradient_clip_val", clip, "null or a number > 0")
    check_run_length(cfg)
    if "trainable" in cfg.model:  # the shapes world's VAE and judge modules (ldm/world) have no trainable set
        check_trainable(cfg.model.trainable)
    ckpt = cfg.get("ckpt_path")
    expect(ckpt is None or Path(ckpt).is_file(), "ckpt_path", ckpt, "null or an existing .ckpt file")


def check_run_length(cfg: DictConfig) -> None:
    """A run, and a schedule that decays over it, must have a known number of steps.

    Why: a stream has no length, so Lightning sizes the run by `max_steps` (-1 unless set): diffusers'
    cosine then swings between 1 and 0 every step, `linear` gives lr 0, and `max_epochs=-1` crashes on
    `int(inf)`, all without a word.
    """
    trainer, data = cfg.trainer, cfg.data
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    steps_set = is_int(max_steps) and max_steps > 0
    expect(steps_set or max_steps == -1, "trainer.max_steps", max_steps, "-1 (no limit) or an integer > 0")
    streamed = data.layout == "hub" and bool(data.get("hub", {}).get("streaming"))
    expect(
        steps_set or not streamed,
        "trainer.max_steps",
        max_steps,
        "an integer > 0 with streamed data (data.hub.streaming=true has no length, so the run and its LR "
        "schedule are sized in steps)",
    )
    name = (cfg.get("lr_scheduler") or {}).get("name")
    require(
        steps_set or name in LENGTH_FREE_SCHEDULES or max_epochs != -1,
        f"lr_scheduler.name={name!r} decays over the run's length, but trainer.max_epochs=-1 with "
        f"trainer.max_steps={max_steps!r} has none: set trainer.max_steps or trainer.max_epochs to a number > 0, "
        f"or use one of {', '.join(LENGTH_FREE_SCHEDULES)}",
    )


def stream_runs_to_max_steps(cfg: DictConfig) -> None:
    """Streamed data with a decaying LR schedule: set `trainer.max_epochs=-1`, and say so.

    Why: a stream's epoch ends when the stream does, so with `max_epochs=N` the run stops after N passes, while
    the schedule, sized to `max_steps` (a stream has no length), is still high: cut short without a word.
    """
    data, trainer = cfg.data, cfg.trainer
    streamed = data.layout == "hub" and bool(data.get("hub", {}).get("streaming"))
    name = (cfg.get("lr_scheduler") or {}).get("name")
    if not streamed or name in LENGTH_FREE_SCHEDULES or trainer.get("max_epochs") == -1:
        return
    log.warning(
        "streamed data with lr_scheduler.name=%s: its schedule is sized to trainer.max_steps=%s, and a stream's "
        "epoch ends when the stream does, so trainer.max_epochs=%s could stop the run before it; running to "
        "trainer.max_steps instead (trainer.max_epochs=-1)",
        name,
        trainer.get("max_steps"),
        trainer.get("max_epochs"),
    )
    trainer.max_epochs = -1
