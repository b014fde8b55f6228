"""notebooks/ranking.ipynb runs from top to bottom on the committed fixture run
(notebooks/fixtures/) and draws the ranking and scaling plots.

The kernel is this interpreter: a kernelspec pointing at ``sys.executable``
is written to a temporary Jupyter path, so no user-level kernel install is
needed and a stale ``python3`` kernelspec elsewhere cannot be picked up.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: the notebook cannot be read")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: the notebook cannot be executed")
pytest.importorskip("ipykernel", reason="ipykernel is not installed: no kernel to execute the notebook")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "einsum-workbench-test"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "einsum-workbench test kernel", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("EINSUM_WORKBENCH_RUNS", str(NOTEBOOKS / "fixtures"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return KERNEL


def test_ranking_notebook_runs_top_to_bottom(kernel_name):
    nb = nbformat.read(NOTEBOOKS / "ranking.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, f"expected the ranking and the scaling figures, got {len(images)} images"
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| reference |" in text and "speedup vs reference" in text
    assert "no scaling results" not in text
