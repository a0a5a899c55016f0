"""examples/quickstart.ipynb runs top to bottom (nbclient + ipykernel) with tiny parameters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _tiny_parameters(workdir: Path) -> str:
    return (f"MAX_MINUTES = None\nMAX_STEPS = 20\nLAYERS = 1\nUNITS = 16\nBATCH_SIZE = 32\nSEQ_LEN = 32\n"
            f"WORKDIR = {str(workdir)!r}\n")


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom_with_tiny_parameters(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (index,) = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell(_tiny_parameters(tmp_path), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)  # after the defaults, as papermill does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the plot as a PNG
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert (tmp_path / "checkpoints" / "pydoc" / "config.json").is_file()
    assert any("Stopped: reached --max-steps 20." in text(c) for c in code)
    assert any(text(c).startswith("The ") for c in code)  # the generated sample
    assert any("bits per character" in text(c) for c in code)
    assert "train loss" in text(code[-1]) and "validation loss" in text(code[-1])  # read from the event files
    assert "at step 20" in text(code[-1])
    assert any("image/png" in o.get("data", {}) for o in code[-1].outputs)  # the loss curve
