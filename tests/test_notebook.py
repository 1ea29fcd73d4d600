"""notebooks/inference.ipynb: stored without outputs, and runs top to bottom (in a temp dir)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
NOTEBOOK = REPO_ROOT / "notebooks" / "inference.ipynb"


def test_notebook_is_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs(tmp_path: Path):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the working directory is tmp_path: no logs/ there, so the notebook trains a tiny model
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert (tmp_path / "logs" / "notebook" / "tiny_synthetic_b0.ckpt").is_file()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the overlays
    tables = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert sum("mean" in t and "background" in t for t in tables) == 2  # per-class tables
