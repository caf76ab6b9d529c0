"""notebooks/Latent_Diffusion_Model.ipynb: kept in git without outputs, and runs top to bottom offline."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "Latent_Diffusion_Model.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "widgets" not in nb.metadata


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_on_the_tiny_preset(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernel inherits this environment: offline, the session's cache, runs in tmp, never SD1.5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LDM_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("LDM_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LDM_SD15", "none")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 2  # the loss curves and the two generated images
    text = "".join(out.get("text", "") for out in outputs)
    assert "SD1.5 not available" in text and "trained" in text and "frozen" in text
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "final_model" / "export.json").is_file()
