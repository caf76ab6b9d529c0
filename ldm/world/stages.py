"""Run the shapes-world stages through `train(cfg)` in order, skipping those whose output is complete.

Why a fingerprint: a stage folder is "complete" only if `stage.json` in it records the same resolved config
(and the same upstream fingerprints) as the run at hand, so changing the VAE retrains everything after it
while an unchanged re-run skips straight to the mission.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from ldm.training.run import train
from ldm.world.generator import VERSION as WORLD_VERSION

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class StageResult:
    experiment: str
    output: str
    skipped: bool
    wall_s: float
    cpu_s: float


def cpu_seconds() -> float:
    """user + sys of this process and its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_output(cfg: DictConfig) -> Path | None:
    """The folder a cached stage exports to (its `callbacks.export.dirpath`), None for the mission."""
    export = cfg.get("callbacks", {}).get("export")
    if export is None or str(export.get("_target_", "")).startswith("ldm.training.callbacks."):
        return None  # the mission's export goes into its own run folder: never cached
    return Path(export.dirpath)


def fingerprint(cfg: DictConfig, upstream: Sequence[str]) -> str:
    """sha256 of the resolved config (run folder and cache location masked), the world's format version and
    the fingerprints of the stages before.

    The cache location is masked so that one cache named two ways (`.cache` and its absolute path, or a
    moved folder) is the same cache: what a stage computes depends on its config and its upstream stages'
    fingerprints, not on where the folders live."""
    masked = OmegaConf.to_container(cfg, resolve=False)
    masked["paths"]["output_dir"] = "<run>"
    masked["paths"]["cache_dir"] = "<cache>"
    text = OmegaConf.to_yaml(OmegaConf.create(masked), resolve=True) + "\n".join([f"world v{WORLD_VERSION}", *upstream])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_fingerprint(folder: Path) -> str | None:
    marker = folder / STAGE_FILE
    return json.loads(marker.read_text())["fingerprint"] if marker.is_file() else None


def run_stage(experiment: str, run_dir: Path, overrides: Sequence[str], upstream: list[str]) -> StageResult:
    """Compose `train` with `experiment=...`; train unless its output folder is complete; append its fingerprint."""
    cfg = compose(
        config_name="train", overrides=[f"experiment={experiment}", f"paths.output_dir={run_dir}", *overrides]
    )
    output = stage_output(cfg)
    print_fp = fingerprint(cfg, upstream)
    upstream.append(print_fp)
    if output is not None and recorded_fingerprint(output) == print_fp:
        log.info("stage %s: complete in %s (same config): skipped", experiment, output)
        return StageResult(experiment, str(output), True, 0.0, 0.0)
    log.info("stage %s: training (run folder %s)", experiment, run_dir)
    wall, cpu = time.perf_counter(), cpu_seconds()
    train(cfg)
    result = StageResult(experiment, str(output or run_dir), False, time.perf_counter() - wall, cpu_seconds() - cpu)
    if output is not None:
        record = {"experiment": experiment, "fingerprint": print_fp, "wall_s": result.wall_s, "cpu_s": result.cpu_s}
        (output / STAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result


def run_all(
    experiments: Sequence[str],
    run_dir: Path,
    overrides: Sequence[str],
    stage_overrides: Mapping[str, Sequence[str]] | None = None,
) -> list[StageResult]:
    """Run `experiments` in order with `overrides` (all stages) plus `stage_overrides[experiment]`.

    Each cached stage logs into `<run_dir>/stages/<experiment>`; the last (the mission) into `run_dir`.
    """
    stage_overrides = stage_overrides or {}
    upstream: list[str] = []
    results = []
    for i, experiment in enumerate(experiments):
        last = i == len(experiments) - 1
        folder = run_dir if last else run_dir / "stages" / experiment
        extra = [*overrides, *stage_overrides.get(experiment, ())]
        results.append(run_stage(experiment, folder, extra, upstream))
    return results
