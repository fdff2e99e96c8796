import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import rules, server


def test_aggregate_hand_computed():
  masks = {"w": jnp.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]], bool)}
  theta = server.aggregate(masks, jnp.array([1.0, 1.0, 0.0]), eps=0.01)  # 3rd slot empty
  # per weight: mean of smoothed bits of the two real clients
  chex.assert_trees_all_close(theta["w"], jnp.array([0.99, 0.5, 0.5]), rtol=1e-6)


def test_logit_round_trip_and_finite_at_extremes():
  theta = {"w": jnp.array([0.01, 0.5, 0.99])}
  s = server.scores_from_probs(theta)
  chex.assert_trees_all_close(jax.nn.sigmoid(s["w"]), theta["w"], rtol=1e-5)
  chex.assert_tree_all_finite(s)
  np.testing.assert_allclose(s["w"][1], 0.0, atol=1e-7)


def test_hamming():
  a = {"x": jnp.array([1, 0, 1, 1], bool), "y": jnp.array([[0, 0]], bool)}
  b = {"x": jnp.array([1, 1, 1, 0], bool), "y": jnp.array([[0, 1]], bool)}
  np.testing.assert_allclose(server.hamming(a, b), 3 / 6)


def test_hamming_with_copies_counts_each_copy_as_its_own_pair():
  # "y" holds 2 independent pairs (the official state dict lists such a layer twice).
  a = {"x": jnp.array([1, 0, 1, 1], bool), "y": jnp.array([[0, 0], [1, 1]], bool)}
  b = {"x": jnp.array([1, 1, 1, 0], bool), "y": jnp.array([[0, 1], [0, 1]], bool)}
  np.testing.assert_allclose(server.hamming(a, b), 4 / 8)


def test_lambda_over_state_dict_copies_draws_each_copy():
  # Layer "y" is certain to differ, "x" never: counted twice, "y" weighs 2 / 3.
  prev = {"x": jnp.full((3,), 50.0), "y": jnp.full((3,), 50.0)}
  new = {"x": jnp.full((3,), 50.0), "y": jnp.full((3,), -50.0)}
  key = jax.random.key(0)
  np.testing.assert_allclose(server.mada_lambda(key, prev, new), 0.5)
  np.testing.assert_allclose(server.mada_lambda(key, prev, new, {"x": 1, "y": 2}), 2 / 3)
  # Uncertain layers: two copies are two independent draws, not one counted twice.
  half = {"y": jnp.zeros((20_000,))}
  lam = server.mada_lambda(key, half, half, {"y": 2})
  assert abs(float(lam) - 0.5) < 0.01
  with pytest.raises(ValueError, match="lambda_counts"):
    server.ServerConfig(lambda_counts="keys")


def test_mada_hand_computed():
  # Saturated scores make both sampled masks deterministic: 2 of 4 bits differ -> lambda 1/2.
  prev = {"w": jnp.array([50.0, 50.0, -50.0, -50.0])}
  new = {"w": jnp.array([50.0, -50.0, 50.0, -50.0])}
  mixed, lam = server.mada(jax.random.key(0), prev, new)
  np.testing.assert_allclose(lam, 0.5)
  chex.assert_trees_all_close(mixed["w"], jnp.array([50.0, 0.0, 0.0, -50.0]))


def _server_update(key, prev, masks, weights, cfg, participants=None):
  """PRISM's rule end to end: ``(new scores, theta_hat, broadcast)``."""
  rule = rules.PrismRule(server=cfg)
  participants = participants or jax.tree.leaves(masks)[0].shape[0]
  bcast, theta = rule.aggregate(key, prev, masks, weights, participants)
  return rule.apply(prev, (), bcast, 0)[0], theta, bcast


def test_prism_rule_with_and_without_mada():
  prev = {"w": jnp.array([3.0, -3.0])}
  masks = {"w": jnp.array([[1, 1], [1, 0]], bool)}
  weights = jnp.ones(2)
  plain, theta, bcast = _server_update(jax.random.key(0), prev, masks, weights,
                                             server.ServerConfig(mada=False))
  chex.assert_trees_all_close(plain["w"], jnp.log(theta["w"] / (1 - theta["w"])), rtol=1e-5)
  assert float(bcast.lam) == 1.0
  mixed, _, bcast = _server_update(jax.random.key(0), prev, masks, weights,
                                         server.ServerConfig(mada=True))
  lam = bcast.lam
  chex.assert_trees_all_close(mixed["w"], (1 - lam) * prev["w"] + lam * plain["w"], rtol=1e-5)
  assert 0.0 <= float(lam) <= 1.0


def test_broadcast_holds_counts_and_rebuilds_the_server_scores_bitwise():
  prev = {"w": jnp.array([3.0, -3.0, 0.5]), "p": jnp.array([0.2, -1.0])}
  uploads = {"w": jnp.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], bool),
             "p": jnp.array([[0.9, 0.1], [0.5, 0.3], [0.0, 0.0]])}   # PRISM-alpha floats
  weights = jnp.array([1.0, 1.0, 0.0])                               # third slot empty
  for mada in (False, True):
    cfg = server.ServerConfig(mada=mada)
    scores, theta, bcast = jax.jit(_server_update, static_argnums=(4, 5))(
        jax.random.key(1), prev, uploads, weights, cfg, 2)
    np.testing.assert_array_equal(bcast.counts["w"], [2, 1, 0])
    assert bcast.counts["w"].dtype == jnp.int32 and bcast.participants == 2
    # PRISM-alpha's layers: the mean probabilities' new scores, sent as float32.
    np.testing.assert_allclose(jax.nn.sigmoid(bcast.counts["p"]), [0.7, 0.2], rtol=1e-6)
    np.testing.assert_allclose(theta["w"], [0.99, 0.5, 0.01], rtol=1e-6)
    # A client rebuilds from (prev, broadcast) alone, in its own program: the same bits.
    rebuilt = jax.jit(server.rebuild, static_argnums=2)(prev, bcast, cfg)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(scores)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_smoothing():
  with pytest.raises(ValueError, match="smoothing"):
    server.ServerConfig(smoothing=0.5)
