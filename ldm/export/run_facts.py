"""What a finished fit did (data, objective, steps, losses), kept in export.json's `run` section.

Why recorded at the end of fit: the model card and the kohya `ss_*` metadata describe the run, and
`python -m ldm.export` rewrites them later from the folder alone, when the trainer is long gone.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L


def _data(datamodule: Any) -> tuple[str, int | None]:
    """A one-line description of the training data, and how many training examples it held (None: a stream)."""
    if datamodule is None:
        return "unknown", None
    hub = getattr(datamodule, "hub", None)
    if hub is not None:
        described = f"hub dataset {hub.name}" + (" (streamed)" if hub.streaming else "")
    else:
        described = f"{getattr(datamodule, 'root', 'unknown')} ({getattr(datamodule, 'layout', '?')} layout)"
    train = getattr(datamodule, "splits", {}).get("train")
    try:
        count = len(train) if train is not None else None
    except TypeError:  # a stream has no length
        count = None
    return described, count


def _objective(module: Any) -> str:
    objective = getattr(module, "objective", None)
    if objective is None:
        return f"noise prediction (MSE, {module.noise_scheduler.config.prediction_type})"
    reward = getattr(objective, "reward", None)
    return f"reward fine-tuning ({type(reward).__name__ if reward is not None else type(objective).__name__})"


def _learning_rate(trainer: L.Trainer) -> float | None:
    optimizers = getattr(trainer, "optimizers", None) or []
    if not optimizers:
        return None
    group = optimizers[0].param_groups[0]
    return float(group.get("initial_lr", group["lr"]))


def run_facts(trainer: L.Trainer, module: Any) -> dict[str, Any]:
    """The JSON-ready facts of a finished fit."""
    data, examples = _data(getattr(trainer, "datamodule", None))
    metrics = trainer.callback_metrics
    losses = {}
    for name, value in metrics.items():
        repeated = name.endswith(("_step", "_epoch")) and name.rsplit("_", 1)[0] in metrics  # train/loss_epoch
        if "loss" in name and not repeated:
            losses[name] = round(float(value), 6)
    preservation = getattr(module, "preservation", None)
    return {
        "data": data,
        "train_examples": examples,
        "objective": _objective(module),
        "preservation_weight": None if preservation is None else float(preservation.weight),
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "learning_rate": _learning_rate(trainer),
        "final_losses": dict(sorted(losses.items())),
    }
