"""`train(cfg)`: compose the Lightning run from a Hydra config (separate from `@hydra.main` for tests)."""

from __future__ import annotations

import logging

import lightning.pytorch as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ldm.config import stream_runs_to_max_steps, validate_train_config
from ldm.training.precision import resolve_precision
from ldm.training.resume import resolve_ckpt_path

log = logging.getLogger(__name__)


def instantiate_or_explain(node: DictConfig, **kwargs: object) -> object:
    """`instantiate`, but a ValueError from our own checks surfaces as itself, not wrapped by Hydra."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule with its optimizer and LR schedule factories (and its objective, unless diffusion)."""
    factories = {"optimizer": instantiate(cfg.optimizer), "lr_scheduler": instantiate(cfg.lr_scheduler)}
    objective = instantiate_or_explain(cfg.objective) if cfg.get("objective") else None
    if objective is not None:  # objective=reward (ldm/training/reward.py); diffusion is the module's own loss
        factories["objective"] = objective
    if cfg.get("preservation"):  # ldm/training/preservation.py; weight 0 switches it off
        factories["preservation"] = instantiate_or_explain(cfg.preservation)
    return instantiate_or_explain(cfg.model, **factories)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Trainer with callbacks and loggers from their groups, and a precision this machine runs well."""
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    callbacks = [instantiate_or_explain(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision)


def train(cfg: DictConfig) -> tuple[L.Trainer, L.LightningModule]:
    """Validate, build, fit (optionally resume and test); return the trainer and the trained module."""
    cfg.ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.runs_dir)  # "last" / a run folder -> file
    validate_train_config(cfg)
    stream_runs_to_max_steps(cfg)  # after the checks: max_steps is known to be set for a stream
    L.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)
    module = build_module(cfg)
    datamodule = instantiate_or_explain(cfg.data, tokenizer=module.tokenizer)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # weights_only: a resumed checkpoint is read as tensors and plain data, never as code
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    if cfg.get("test"):
        trainer.test(module, datamodule=datamodule)
    log.info("final metrics: %s", {k: float(v) for k, v in trainer.callback_metrics.items()})
    return trainer, module
