"""Scaling out with Lightning's engines: 2 DDP processes (gloo, CPU) on the tiny preset, and the caches.

One DDP run checks both the lockstep training and the latent cache under DDP: each run costs two
processes' imports (about 30 s on 2 cores), so the suite starts it once.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from ldm.files import write_folder
from tests.helpers import run_train


@pytest.mark.slow
def test_two_ddp_processes_step_together_from_one_latent_cache_and_only_rank_0_writes(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Both ranks train in lockstep from cached latents that rank 0 alone encoded; rank 0 alone writes outputs."""
    runs, probe, latents, saves = tmp_path / "outputs", tmp_path / "probe", tmp_path / "latents", tmp_path / "saves"
    run_dir = runs / "ddp"
    result = run_train(
        "experiment=tiny",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        f"paths.cache_dir={cache_dir}",
        f"paths.runs_dir={runs}",
        f"hydra.run.dir={run_dir}",
        "+callbacks.probe._target_=tests.helpers.RankProbe",  # test-only: what each rank saw
        f"+callbacks.probe.dirpath={probe}",
        "data.cache_latents=true",
        f"data.latent_cache_dir={latents}",
        "+callbacks.save_probe._target_=tests.helpers.SaveProbe",  # test-only: which rank wrote cache entries
        f"+callbacks.save_probe.dirpath={saves}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 24 train images, batch 4, sharded over 2 ranks: 3 steps each, in lockstep
    assert [r["global_step"] for r in ranks] == [3, 3]
    assert [len(r["losses"]) for r in ranks] == [3, 3]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank trained on its own shard ...
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]  # ... the reported (synced) loss is one number ...
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # ... and the weights stayed identical
    # the latent cache: rank 0 encoded every entry, rank 1 wrote none and trained from rank 0's entries
    writes = {r: (saves / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)}
    assert writes[1] == [] and len(writes[0]) == len(list(latents.rglob("*.safetensors"))) > 0

    # exactly one set of outputs, all from rank 0, in the one run folder (rank 1 reuses it: no second folder)
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch000-step000003-val{:.4f}.ckpt".format(ranks[0]["val_loss"]),
        "last.ckpt",
    ]
    assert len(list(run_dir.glob("**/events.out.tfevents.*"))) == 1
    assert len(list(run_dir.glob("**/final_weights.safetensors"))) == 1
    assert len(list(run_dir.glob("**/hparams.yaml"))) == 1
    assert len(list(run_dir.glob("**/.hydra"))) == 1


def test_the_tiny_model_cache_is_safe_with_two_writers(tmp_path: Path) -> None:
    """Under torchrun every rank resolves `${tiny_pretrained:...}` at once: one folder wins, none breaks."""
    target, barrier, errors = tmp_path / "tiny", threading.Barrier(2), []

    def save(tmp: Path) -> None:
        barrier.wait()  # both writers are mid-write at the same moment
        (tmp / "model_index.json").write_text("{}")

    def writer() -> None:
        try:
            write_folder(target, save, replace=False)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp folder left behind
    assert (target / "model_index.json").read_text() == "{}"
