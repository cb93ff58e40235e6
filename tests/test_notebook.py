"""notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient) with no error, and each
system's cell prints what it claims (the outputs are checked, not just the absence of an exception)."""
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.slow  # about 2 minutes on 2 cores: over the default run's budget
def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "CpuDevice(id=7)" in out                                   # eight virtual devices
    diff = float(re.search(r"max \|one device - mesh\| ([0-9.e+-]+)", out).group(1))
    assert diff < 1e-4                                                # the sharded MoE equals one device
    assert re.search(r"bytes sent \d+x fewer", out)
    assert "restored step 7, equal: True" in out
    assert re.search(r"steps \d+ validation accuracy 0\.\d+", out)
    assert len(re.findall(r"heuristic 0\.\d+ CP-SAT 0\.\d+ MuZero 0\.\d+", out)) == 2
    assert re.search(r"agent \(greedy\)\s+makespan \d+", out)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
