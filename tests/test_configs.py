"""The paper configs run the official code's behaviours; flags that exclude each other and
a DP setting that would claim privacy it has not are refused before any run starts."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import mnist_cpu, paper
from prism_jax import configure


@pytest.mark.parametrize("arg", ["mnist,dirichlet", "cifar10,iid,cpu", "mnist_offline,shards,smoke"])
def test_paper_configs_use_the_official_behaviours(arg):
  c = paper.get_config(arg)
  assert c.local.carry_optimizer and c.input_fan == "torch"
  assert (c.local.estimator, c.local.learning_rate, c.local.b1) == ("prob", 0.1, 0.5)
  assert tuple(c.eval.modes) == ("fixed", "resampled", "threshold")
  if "cpu" not in arg and "smoke" not in arg:
    assert c.features == "vgg19" and c.features_kwargs.official
    assert c.loss.kwargs.v_init == "torch" and c.ngf == 64 and c.clients_per_round is None


def test_official_dp_flag_and_its_refusals(tmp_path):
  c = paper.get_config("mnist_offline,dirichlet,cpu,dpofficial")
  assert c.local.dp_mode == "official" and c.dp.epsilon is None
  assert configure.build(c).local.dp_mode == "official"
  with pytest.raises(ValueError, match="dp and dpofficial exclude each other"):
    paper.get_config("mnist,dirichlet,dp,dpofficial")
  c.dp.epsilon = 9.8
  with pytest.raises(ValueError, match="no privacy guarantee"):
    configure.build(c)


@pytest.mark.parametrize("variant", ["", "mmd"])
def test_default_run_is_pure_prism(variant):
  """The offline default (and its one-loss variant): masks only, 1 bit per weight up; MADA
  on in the variant, off in the default (measured harmful at its scale, docs/default.md)."""
  prism = configure.build(mnist_cpu.get_config(variant))
  assert prism.method == "prism" and prism.rule.alpha == 0
  assert prism.rule.server.mada == bool(variant)
  assert prism.rule.sends_masks and prism.local.carry_optimizer


def test_override_of_a_missing_field_says_what_exists_and_where_it_is():
  from experiments.configs import mnist_cpu, overrides
  c = mnist_cpu.get_config()
  msg = overrides.missing_field_message(c, "features_kwargs.weights",
                                        "--config.features_kwargs.weights")
  assert msg.startswith("--config.features_kwargs.weights: the chosen config has no field "
                        "'weights' in features_kwargs (its fields: none)")
  assert "paper.py:mnist_offline,dirichlet" in msg
  assert "did you mean 'rounds'?" in overrides.missing_field_message(c, "rouds")
  assert overrides.missing_field_message(c, "local.learning_rate") is None
  with pytest.raises(ValueError, match="no field 'lr' in local .*learning_rate"):
    overrides.override(c, "local.lr", 0.1)
  assert overrides.override(c, "local.learning_rate", 0.1).local.learning_rate == 0.1


def test_command_line_override_of_a_missing_field_fails_with_the_explanation():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "experiments.train", "--workdir=/nonexistent",
                         "--config.features_kwargs.weights=w.npz"], cwd=root,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "AttributeError" not in proc.stderr
  assert "FATAL: --config.features_kwargs.weights: the chosen config has no field" in proc.stderr


def test_ot_variant_changes_only_the_loss_and_a_bad_variant_is_named():
  from prism_jax import losses
  default, ot = mnist_cpu.get_config("mmd"), mnist_cpu.get_config("ot")
  assert ot.loss.name == "sum"
  x = jax.random.normal(jax.random.key(0), (8, 16))        # 4 x 4 images for edge_w2
  y = jax.random.normal(jax.random.key(1), (8, 16))
  got = losses.get_loss(ot.loss.name, **ot.loss.kwargs).apply(x, y, ())[0]
  want = (losses.sinkhorn_divergence(x, y, eps=0.01) + losses.marginal_w2(x, y)
          + losses.edge_w2(x, y) + losses.gaussian_mmd(x, y, bandwidths=(0.01, 0.03)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  default.loss = ot.loss
  assert default.to_dict() == ot.to_dict()
  with pytest.raises(ValueError, match="unknown variant 'sinkhorn'; choose one of "
                     "\\['mmd', 'ot', 'ot_mmd'\\]"):
    mnist_cpu.get_config("sinkhorn")
  with pytest.raises(ValueError, match="':digits' curriculum is now the default"):
    mnist_cpu.get_config("digits")


def test_ot_mmd_variant_is_ot_with_strided_histograms_then_the_default_loss():
  from prism_jax import losses
  default, ot, ot_mmd = (mnist_cpu.get_config(v) for v in ("mmd", "ot", "ot_mmd"))
  x = jax.random.normal(jax.random.key(0), (8, 64))
  y = jax.random.normal(jax.random.key(1), (8, 64))
  got = losses.get_loss(ot_mmd.loss.name, **ot_mmd.loss.kwargs).apply(x, y, ())[0]
  want = (losses.sinkhorn_divergence(x, y, eps=0.01) + losses.marginal_w2(x, y, stride=7)
          + losses.edge_w2(x, y, stride=13) + losses.gaussian_mmd(x, y, bandwidths=(0.01, 0.03)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert (ot_mmd.refine.start, ot_mmd.refine.name, ot_mmd.refine.reset_optimizer) == (
      4, default.loss.name, True) and not ot_mmd.refine.kwargs
  ot.loss, ot.refine = ot_mmd.loss, ot_mmd.refine
  assert ot.to_dict() == ot_mmd.to_dict()


def test_default_is_ot_mmd_in_fewer_longer_rounds():
  ot_mmd, default = mnist_cpu.get_config("ot_mmd"), mnist_cpu.get_config()
  assert (default.local.local_steps, default.refine.local_steps, default.refine.start,
          default.rounds) == (150, 200, 3, 6)
  assert default.refine.kwargs.to_dict() == {"bandwidths": (0.03, 0.1, 0.3)}
  default.refine.local_steps, default.refine.start, default.rounds = (
      ot_mmd.refine.local_steps, ot_mmd.refine.start, ot_mmd.rounds)
  default.refine.kwargs = ot_mmd.refine.kwargs
  assert not default.mada and ot_mmd.mada
  default.mada = True
  assert default.to_dict() == ot_mmd.to_dict()


@pytest.mark.parametrize("field,value,message", [
    ("local.learning_rate", 1e30, r"local.learning_rate=1e\+30 is outside its valid range \(0, 10\]"),
    ("local.learning_rate", float("nan"), r"local.learning_rate=nan is outside"),
    ("local.b2", 1.0, r"local.b2=1.0 is outside its valid range \[0, 1\)"),
    ("smoothing", 0.7, r"smoothing=0.7 is outside its valid range \(0, 0.5\)"),
    ("rounds", 0, r"rounds=0 is outside its valid range \[1, 1e\+06\]"),
])
def test_absurd_values_are_refused_with_their_range(tmp_path, field, value, message):
  """A typo or a unit error stops the run before any output, naming the valid range."""
  from prism_jax import train
  c = mnist_cpu.get_config()
  *parents, leaf = field.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=message):
    train.train(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_precision_reaches_the_generator_and_vgg19_and_is_checked():
  c = paper.get_config("mnist_offline,dirichlet,cpu")
  assert configure.build(c).model.matmul_dtype is None
  c.precision, c.features = "bfloat16", "vgg19"
  c.features_kwargs = {"weights": "random", "official": True, "width": 0.125}
  prism = configure.build(c)
  assert prism.model.matmul_dtype == "bfloat16"
  assert prism.objective.features.name.endswith("-bf16")
  c.precision = "half"
  with pytest.raises(ValueError, match="config.precision='half'"):
    configure.build(c)
