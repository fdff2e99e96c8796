"""The Colab notebook, executed end to end at smoke scale (PRISM_NOTEBOOK_SMOKE=1)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_colab_notebook_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("PRISM_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("PRISM_JAX_CACHE", str(tmp_path / "cache"))
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "prism_colab.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 3                      # samples, curves, the extension's samples
  tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert tables and "| 2 |" in tables[0] and "dense FedAvg" in tables[0]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "round 2: energy distance" in text
  assert (tmp_path / "runs" / "colab-smoke" / "model.npz").exists()
