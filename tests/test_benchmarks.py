"""The accelerator benchmark's smoke mode runs the paper's path (official VGG19 + GFMN) on CPU."""
import json

import pytest
from PIL import Image

from benchmarks import accelerator


@pytest.mark.slow
def test_accelerator_benchmark_smoke_writes_json_and_grid(tmp_path, monkeypatch):
  monkeypatch.setenv("PRISM_JAX_CACHE", str(tmp_path / "cache"))
  accelerator.main(["--smoke", "--budget_s=1", f"--out={tmp_path}"])
  result = json.loads((tmp_path / "accelerator.json").read_text())
  assert result["rounds"] == 2 and len(result["loss"]) == 2   # compile + one steady round
  assert result["features"] == "vgg19_bn-official-L16" and result["local_steps"] == 2
  assert 0 < result["seconds_per_round"] <= result["first_round_seconds (compile + run)"]
  assert Image.open(tmp_path / "accelerator_samples.png").size[0] > 16
