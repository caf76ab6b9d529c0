"""Stage 3's evidence: adherence of the base model and of the fine-tuned one, as report.json, a table, a grid.

Why a callback: `python train.py experiment=shapes` then judges the very module it trains, before the
first step (the base model, untouched) and after the last, with the same prompts and seeds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from ldm.generation.output import make_grid
from ldm.training.module import TextEncoderFineTuner
from ldm.world.adherence import (
    Prompt,
    SamplingPlan,
    chance_levels,
    difference_interval,
    eval_prompts,
    render,
    score,
    with_intervals,
)
from ldm.world.export import load_judge
from ldm.world.vocab import ATTRIBUTES, VOCABULARIES

log = logging.getLogger(__name__)
STAGES = {"base_model": "base model", "after_stage3": "after stage 3"}


def _triple(row: Mapping[str, Any]) -> tuple[float, float, float]:
    """(mean, low, high) of one row of adherence: the point estimate and its 95% interval."""
    low, high = row["ci95"]["mean"]
    return row["mean"], low, high


def check_targets(adherence: Mapping[str, Any], targets: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with the value reached, its 95% interval and whether it is met.

    A target is judged on the point estimate; the interval is shown beside it, so a target met (or missed)
    by less than the interval's width reads as the coin toss it is.
    """
    before, after = adherence.get("base_model"), adherence.get("after_stage3")
    checks: dict[str, dict[str, Any]] = {}
    if before:
        value, low, high = _triple(before["base"])
        checks["base_model_on_base_prompts"] = {
            "value": value,
            "ci95": [low, high],
            "min": targets["base_min"],
            "met": value >= targets["base_min"],
        }
        value, low, high = _triple(before["new"])
        chance = sum(chance_levels().values()) / len(ATTRIBUTES)
        near = abs(value - chance) <= targets["new_before_max_above_chance"]
        checks["base_model_on_new_prompts_near_chance"] = {
            "value": value,
            "ci95": [low, high],
            "chance": chance,
            "met": near,
        }
    if before and after:
        value, low, high = _triple(after["new"])
        checks["after_stage3_on_new_prompts"] = {
            "value": value,
            "ci95": [low, high],
            "min": targets["new_after_min"],
            "met": value >= targets["new_after_min"],
        }
        drop = before["base"]["mean"] - after["base"]["mean"]
        checks["base_prompts_drop"] = {
            "value": drop,
            "ci95": list(difference_interval(_triple(before["base"]), _triple(after["base"]))),
            "max": targets["base_drop_max"],
            "met": drop <= targets["base_drop_max"],
        }
    return checks


def _cell(row: Mapping[str, Any], key: str) -> str:
    low, high = row["ci95"][key]
    return f"{row[key]:>6.1%} [{low:>3.0%},{high:>4.0%}]"


def format_table(report: Mapping[str, Any], judge: str | None = None) -> str:
    """Plain-text table of adherence by stage and vocabulary, each share with its 95% Wilson interval.

    judge: None for the evaluation judge's `adherence`, or a name in `adherence_by_other_judge`."""
    chance = report["chance"]
    adherence = report["adherence"] if judge is None else report["adherence_by_other_judge"][judge]
    width = 20
    head = f"{'stage':<15}{'prompts':<9}{'n':>5}" + "".join(f"{a:>{width}}" for a in (*ATTRIBUTES, "mean"))
    lines = [head, "-" * len(head)]
    for stage, label in STAGES.items():
        for vocab in VOCABULARIES:
            row = adherence.get(stage, {}).get(vocab)
            if row is not None:
                cells = "".join(f"{_cell(row, a):>{width}}" for a in (*ATTRIBUTES, "mean"))
                lines.append(f"{label:<15}{vocab:<9}{row['n']:>5}{cells}")
    mean_chance = sum(chance.values()) / len(chance)
    lines.append(
        f"{'chance':<29}" + "".join(f"{chance[a]:>{width}.1%}" for a in ATTRIBUTES) + f"{mean_chance:>{width}.1%}"
    )
    if judge is not None:
        lines.append(f"scored by {judge}, on the same images as the evaluation judge's table")
        return "\n".join(lines)
    lines.append("[low, high]: 95% Wilson interval; targets are judged on the point estimate")
    for name, check in report.get("checks", {}).items():
        low, high = check["ci95"]
        lines.append(f"{'met ' if check['met'] else 'MISSED'} {name}: {check['value']:.1%} [{low:.1%}, {high:.1%}]")
    return "\n".join(lines)


def before_after_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], scale: int) -> Image.Image:
    """One labelled row of images per (label, images), nearest-neighbour upscaled so 32 px stays readable."""
    label_width = 110
    grids = [make_grid(list(images), columns=len(images)) for _, images in rows]
    width, height = grids[0].width * scale, grids[0].height * scale
    canvas = Image.new("RGB", (label_width + width, height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, ((label, _), grid) in enumerate(zip(rows, grids, strict=True)):
        canvas.paste(grid.resize((width, height), Image.Resampling.NEAREST), (label_width, i * height))
        draw.text((4, i * height + height // 2 - 6), label, fill=(0, 0, 0))
    return canvas


class AdherenceReport(L.Callback):
    """Judge the module on fixed prompts per vocabulary before fine-tuning and after; write the report.

    Every `curve_every_n_epochs` epochs (null: never) it also judges new-vocabulary prompts, for the curve.
    `other_judges` (name -> judge folder) score the very same images too, e.g. the reward classifier of
    experiment=shapes_reward: adherence under the judge that was optimised, beside the one that was not.
    """

    def __init__(
        self,
        *,
        judge: str,
        out_dir: str,
        prompts_per_vocabulary: int,
        templates: str,
        steps: int,
        guidance_scale: float,
        guidance_rescale: float,
        scheduler: str,
        seed: int,
        batch_size: int,
        grid_prompts: int,
        grid_scale: int,
        curve_every_n_epochs: int | None,
        targets: Mapping[str, float],
        other_judges: Mapping[str, str] | None = None,
    ) -> None:
        self.judge_dir = judge
        self.other_judge_dirs = dict(other_judges or {})
        self.other_judges: dict[str, Any] = {}
        self.other_adherence: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.other_judge_dirs}
        self.out_dir = Path(out_dir)
        self.plan = SamplingPlan(steps, guidance_scale, scheduler, seed, batch_size, guidance_rescale=guidance_rescale)
        self.prompts = {v: eval_prompts(v, prompts_per_vocabulary, templates, seed) for v in VOCABULARIES}
        self.templates = templates
        self.grid_prompts = grid_prompts
        self.grid_scale = grid_scale
        self.curve_every_n_epochs = curve_every_n_epochs
        self.targets = dict(targets)
        self.judge = None
        self.judge_report: dict[str, Any] = {}
        self.adherence: dict[str, dict[str, Any]] = {}
        self.grid_images: dict[str, dict[str, list[Image.Image]]] = {}
        self.curve: list[dict[str, Any]] = []
        self.epoch_losses: list[float] = []
        self.seconds: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        try:
            self.judge, self.judge_report = load_judge(self.judge_dir)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no judge at {self.judge_dir}: run `python train.py experiment=shapes_judge` first "
                "(or `make demo`, which runs every stage)"
            ) from None
        self.other_judges = {name: load_judge(path) for name, path in self.other_judge_dirs.items()}

    def _evaluate(self, module: TextEncoderFineTuner, stage: str, vocabularies: Sequence[str]) -> dict[str, Any]:
        start = time.perf_counter()
        result = {}
        for vocab in vocabularies:
            prompts: list[Prompt] = self.prompts[vocab]
            images = render(module, prompts, self.plan, desc=f"adherence {STAGES.get(stage, stage)}, {vocab} prompts")
            result[vocab] = with_intervals(score(self.judge, images, prompts), len(prompts))
            others = self.other_judges.items() if stage in STAGES else ()  # the curve is the evaluation judge's alone
            for name, (other, _) in others:
                scores = with_intervals(score(other, images, prompts), len(prompts))
                self.other_adherence[name].setdefault(stage, {})[vocab] = scores
            self.grid_images.setdefault(stage, {})[vocab] = images[: self.grid_prompts]
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        return result

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.adherence["base_model"] = self._evaluate(pl_module, "base_model", list(VOCABULARIES))

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None:
            self.epoch_losses.append(float(loss))
        n = self.curve_every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and trainer.current_epoch + 1 < trainer.max_epochs:
            point = self._evaluate(pl_module, "curve", ["new"])["new"]
            self.curve.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step, "new": point})
            log.info("adherence after epoch %d: new prompts %.1f%%", trainer.current_epoch + 1, 100 * point["mean"])

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "base_model" not in self.adherence:
            return
        self.adherence["after_stage3"] = self._evaluate(pl_module, "after_stage3", list(VOCABULARIES))
        self.curve.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, "new": self.adherence["after_stage3"]["new"]}
        )
        report = self.build_report(pl_module, trainer)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        rows = [
            (f"{STAGES[stage]}, {vocab}", self.grid_images[stage][vocab])
            for vocab in ("new", "base")
            for stage in STAGES
        ]
        before_after_grid(rows, self.grid_scale).save(self.out_dir / "grid.png")
        table = "\n\n".join([format_table(report), *(format_table(report, name) for name in self.other_judges)])
        print(f"\n{table}\nreport: {self.out_dir / 'report.json'}   grid: {self.out_dir / 'grid.png'}", flush=True)

    def build_report(self, module: TextEncoderFineTuner, trainer: L.Trainer) -> dict[str, Any]:
        report = {
            "base_model": module.hparams.pretrained,
            "trainable": module.trainable_names,
            "sampling": {
                "scheduler": self.plan.scheduler,
                "steps": self.plan.steps,
                "guidance_scale": self.plan.guidance_scale,
                "guidance_rescale": self.plan.guidance_rescale,
                "seed": self.plan.seed,
                "seeds": "prompt i uses seed + i",
                "batch_size": self.plan.batch_size,
                "templates": self.templates,
                "prompts_per_vocabulary": {v: len(p) for v, p in self.prompts.items()},
            },
            "chance": chance_levels(),
            "judge": self.judge_report,
            "adherence": self.adherence,
            "other_judges": {
                name: {"dir": self.other_judge_dirs[name], **rep} for name, (_, rep) in self.other_judges.items()
            },
            "adherence_by_other_judge": self.other_adherence,
            "curve": self.curve,
            "stage3": {
                "steps": trainer.global_step,
                "epochs": trainer.current_epoch,
                "train_loss_by_epoch": self.epoch_losses,
            },
            "seconds": self.seconds,
            "prompts": {v: [p.text for p in prompts] for v, prompts in self.prompts.items()},
        }
        report["checks"] = check_targets(self.adherence, self.targets)
        return report
