"""Baselines in the same round: FedPM's Beta-posterior aggregation and dense FedAvg."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mnist_cpu
from prism_jax import algorithm, configure, data, rules
from prism_jax import baselines, client, export, generator, server
from prism_jax import round as rnd


def _masks(rows):
  return {"w": jnp.asarray(rows, bool)}


def test_fedpm_posterior_mode_accumulates_and_resets():
  state = baselines.beta_init({"w": jnp.zeros(3)})
  weights = jnp.array([1.0, 1.0, 1.0, 0.0])   # last slot is padding
  masks = _masks([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 1]])
  theta, state = baselines.fedpm_update(state, masks, weights, jnp.int32(0), 2, eps=0.01)
  # Beta(1,1) + 3 observations: a = 1 + ones, b = 1 + 3 - ones; mode = ones / 3.
  np.testing.assert_allclose(state[0]["w"], [4, 2, 1])
  np.testing.assert_allclose(state[1]["w"], [1, 3, 4])
  np.testing.assert_allclose(theta["w"], [0.99, 1 / 3, 0.01], rtol=1e-6)
  # Round 1 (no reset at period 2): the posterior keeps the first round's counts.
  masks2 = _masks([[0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 1, 1]])
  theta, state2 = baselines.fedpm_update(state, masks2, weights, jnp.int32(1), 2)
  np.testing.assert_allclose(theta["w"], [3 / 6, 4 / 6, 0.01], rtol=1e-6)
  # Round 2 resets to Beta(1, 1): only this round's masks count.
  theta, _ = baselines.fedpm_update(state2, masks2, weights, jnp.int32(2), 2)
  np.testing.assert_allclose(theta["w"], [0.01, 0.99, 0.01], rtol=1e-6)


def test_fedpm_reset_period_follows_participation():
  assert baselines.fedpm_reset_every(10, 10) == 1
  assert baselines.fedpm_reset_every(10, 4) == 3
  assert baselines.fedpm_reset_every(100, 10) == 10


def test_fedavg_is_the_mean_over_participants():
  uploads = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]])}
  out = baselines.fedavg_update(uploads, jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(out["w"], [2.0, 4.0])


def _data(num_clients=4, n=12, size=16):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (num_clients, n, size, size, 1)).astype(np.uint8)
  return data.ClientData(jnp.asarray(images), jnp.full((num_clients,), n, jnp.int32))


def _prism(objective, rule, **kw):
  local = kw.pop("local", client.LocalConfig(local_steps=3, batch_size=4))
  return algorithm.Prism(objective, local, num_clients=4, rule=rule, **kw)


def test_fedpm_round_keeps_beta_counts(tiny_model, tiny_objective):
  prism = _prism(tiny_objective, rules.FedPMRule(), clients_per_round=2)   # reset every 2
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=prism)
  step = rnd.make_round_step(prism)
  data = _data()
  state, m = step(state, data, jax.random.key(1))
  a, b = state.aux
  # After one round from Beta(1, 1) with 2 clients: a + b = 4 everywhere.
  chex.assert_trees_all_close(jax.tree.map(jnp.add, a, b),
                              jax.tree.map(lambda x: jnp.full_like(x, 4.0), a))
  theta = jax.nn.sigmoid(state.scores["output"]["kernel"])
  expected = jnp.clip((a["output"]["kernel"] - 1) / 2, 0.01, 0.99)
  np.testing.assert_allclose(theta, expected, atol=1e-5)
  state, m = step(state, data, jax.random.key(2))
  a, b = state.aux
  assert float(jnp.min(a["output"]["kernel"] + b["output"]["kernel"])) == 6.0
  state, _ = step(state, data, jax.random.key(3))      # round index 2: reset, 2 new masks
  a, b = state.aux
  assert float(jnp.max(a["output"]["kernel"] + b["output"]["kernel"])) == 4.0
  assert m["mada_lambda"] == 1.0 and step.jitted._cache_size() == 1


def test_fedavg_round_trains_dense_weights(tiny_model, tiny_objective):
  local = client.LocalConfig(local_steps=3, batch_size=4, learning_rate=1e-3)
  prism = _prism(tiny_objective, rules.FedAvgRule(), local=local)
  assert prism.objective.trains == "weights" and not prism.rule.sends_masks
  state = algorithm.init_state(tiny_model, 7, jax.random.key(0), prism=prism)
  w0 = generator.init_weights(tiny_model, 7)
  chex.assert_trees_all_equal(state.scores, w0)       # starts from the seed's weights
  new, m = rnd.make_round_step(prism)(state, _data(), jax.random.key(1))
  assert set(m) == {"loss", "loss_first", "loss_last"}
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.scores),
                                                   jax.tree.leaves(w0))]
  assert all(changed)
  # One client's update by hand: the server's result is the mean of the clients'.
  objective = prism.objective
  ups = []
  k_clients = jax.random.split(jax.random.key(1), 3)[1]
  data = _data()
  for i in range(4):
    up, _, _ = client.client_update(state.scores, w0, data.images[i], data.counts[i],
                                    jax.random.fold_in(k_clients, i), objective=objective,
                                    cfg=local)
    ups.append(up)
  mean = jax.tree.map(lambda *x: sum(x) / 4, *ups)
  chex.assert_trees_all_close(new.scores, mean, atol=1e-5)


def test_baseline_configs_that_make_no_sense_are_refused(tiny_objective):
  c = mnist_cpu.get_config()
  c.method = "fedsgd"
  with pytest.raises(ValueError, match="unknown method 'fedsgd'"):
    configure.build(c)
  c.method, c.prism_alpha = "fedpm", 0.25
  with pytest.raises(ValueError, match="PRISM-alpha"):
    configure.build(c)
  c.method, c.prism_alpha, c.dp.mechanism, c.dp.epsilon = "fedpm", 0.0, "pbm", 10.0
  with pytest.raises(ValueError, match="PBM mechanism applies to PRISM"):
    configure.build(c)
  with pytest.raises(ValueError, match="no DP mechanism"):
    _prism(tiny_objective, rules.FedAvgRule(),
           local=client.LocalConfig(local_steps=1, dp_noise_std=0.1))
  with pytest.raises(ValueError, match="fedpm_reset"):
    _prism(tiny_objective, rules.FedPMRule(reset_every=0))


def test_dense_export_round_trip(tmp_path, tiny_model):
  params = jax.tree.map(lambda w: w * 0.5, generator.init_weights(tiny_model, 3))
  path = str(tmp_path / "dense.npz")
  size = export.save_dense(path, tiny_model, params)
  n = sum(x.size for x in jax.tree.leaves(params))
  assert 4 * n < size < 4 * n + 2000
  z = jax.random.normal(jax.random.key(0), (3, tiny_model.nz))
  np.testing.assert_allclose(export.load_generator(path)(z),
                             tiny_model.apply({"params": params}, z), atol=1e-6)
  with pytest.raises(ValueError, match="dense weights, not a mask"):
    export.load_model(path)


def test_server_smoothing_and_fedpm_agree_on_one_full_round():
  """With every client in and a fresh prior, FedPM's mode is the plain mask average."""
  masks = _masks([[1, 0, 1, 1], [1, 0, 0, 1], [1, 1, 0, 0]])
  w = jnp.ones(3)
  theta, _ = baselines.fedpm_update(baselines.beta_init({"w": jnp.zeros(4)}), masks, w,
                                    jnp.int32(0), 1, eps=0.01)
  np.testing.assert_allclose(theta["w"], jnp.clip(jnp.mean(masks["w"], 0), 0.01, 0.99),
                             rtol=1e-6)
  # PRISM's smoothing maps bits before averaging instead: same ordering, other values.
  prism_theta = server.aggregate(masks, w)["w"]
  assert np.all(np.argsort(prism_theta) == np.argsort(theta["w"]))
