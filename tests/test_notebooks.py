"""Execute the teaching notebooks (jupytext percent files in notebooks/) with tiny settings.

Each notebook reads PROBMF_NOTEBOOK_QUICK=1 and shrinks every size knob; MovieLens 100K is
taken from $PROBMF_DATA_DIR when it is there, else the notebooks fall back to synthetic data.
A cell that raises (including the asserts inside the notebooks) fails the test.
"""

import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_ratings_matrix.py", "02_matrix_factorization.py", "03_mle_map_bayes.py", "04_neural.py")


def _stdout(nb) -> str:
    """Everything the notebook printed."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                parts.append(out.get("text", ""))
    return "".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    nb = jupytext.read(ROOT / "notebooks" / name)
    assert any(cell.cell_type == "markdown" for cell in nb.cells)
    monkeypatch.setenv("PROBMF_NOTEBOOK_QUICK", "1")
    data_dir = os.environ.get("PROBMF_DATA_DIR")
    if data_dir:  # the kernel runs in the repository root, so make a relative path absolute
        monkeypatch.setenv("PROBMF_DATA_DIR", str(Path(data_dir).resolve()))
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *([pythonpath] if pythonpath else [])]))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError when a cell raises
    text = _stdout(nb)
    assert text.startswith("data: "), text[:200]
    assert "RMSE" in text
