"""notebooks/Latent_Diffusion_Model.ipynb: kept in git without outputs, and runs top to bottom offline,
on the tiny preset when no shapes-world run exists and on the newest mission run when one does."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "Latent_Diffusion_Model.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "widgets" not in nb.metadata


def run_notebook(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shapes_runs: str) -> list:
    """Execute the notebook in a kernel that inherits this environment; return its code cells' outputs."""
    # offline, the session's cache, runs in tmp, never SD1.5; shapes-world runs looked for in `shapes_runs`
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LDM_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("LDM_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LDM_SD15", "none")
    monkeypatch.setenv("LDM_SHAPES_RUNS", shapes_runs)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def figures_and_text(outputs: list) -> tuple[int, str]:
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    return len(figures), "".join(out.get("text", "") for out in outputs)


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_the_tiny_preset(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures, text = figures_and_text(run_notebook(cache_dir, tmp_path, monkeypatch, str(tmp_path / "no-runs")))
    assert figures == 2  # the loss curves and the two generated images
    assert "SD1.5 not available" in text and "trained" in text and "frozen" in text
    assert "no shapes-world mission run found" in text
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "final_model" / "export.json").is_file()


def fake_mission_run(folder: Path) -> Path:
    """A run folder as `python train.py experiment=shapes` leaves it: report.json, grid.png, TensorBoard events."""
    from torch.utils.tensorboard import SummaryWriter

    from ldm.world.report import before_after_grid

    folder.mkdir(parents=True)
    writer = SummaryWriter(str(folder / "tensorboard"))
    for step in range(6):
        writer.add_scalar("train/loss_step", 0.12 - 0.005 * step, step)
    for epoch, loss in enumerate([0.120, 0.100, 0.089]):
        writer.add_scalar("train/loss_epoch", loss, 2 * epoch + 1)
    writer.close()
    score = {"shape": 0.25, "colour": 0.2, "position": 0.2, "mean": 0.22}
    good = {"shape": 0.94, "colour": 0.72, "position": 0.99, "mean": 0.88}
    report = {
        "trainable": ["text_encoder"],
        "chance": {"shape": 0.25, "colour": 1 / 6, "position": 0.2},
        "adherence": {"base_model": {"base": good, "new": score}, "after_stage3": {"base": good, "new": good}},
        "curve": [{"epoch": 2, "step": 4, "new": score}, {"epoch": 3, "step": 6, "new": good}],
        "checks": {"after_stage3_on_new_prompts": {"value": 0.88, "min": 0.8, "met": True}},
        "stage3": {"steps": 6, "epochs": 3, "train_loss_by_epoch": [0.12, 0.1, 0.089]},
        "prompts": {v: [f"{v} prompt {i}" for i in range(8)] for v in ("base", "new")},
    }
    (folder / "report.json").write_text(json.dumps(report))
    images = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(8)]
    before_after_grid([(label, images) for label in "abcd"], 3).save(folder / "grid.png")
    return folder


@pytest.mark.slow
def test_the_notebook_shows_the_newest_shapes_world_run(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "outputs"
    fake_mission_run(runs / "2026-01-01" / "00-00-00")
    newest = fake_mission_run(runs / "2026-01-02" / "00-00-00")
    figures, text = figures_and_text(run_notebook(cache_dir, tmp_path, monkeypatch, str(runs)))
    assert f"shapes-world mission run: {newest}" in text
    assert "mission: 6 steps, 3 epochs" in text and "after stage 3  new" in text  # the report's table
    assert figures == 3  # loss curves, adherence (before/after + per epoch), the before/after images
    assert not (tmp_path / "runs").exists()  # nothing was trained
