import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import masking


def test_keep_frequency_matches_sigmoid():
  scores = jnp.array([-3.0, -1.0, 0.0, 0.5, 2.0])
  theta = jax.nn.sigmoid(scores)
  keys = jax.random.split(jax.random.key(0), 20_000)
  draws = jax.vmap(lambda k: masking.masks({"w": scores}, k)["w"])(keys)
  freq = jnp.mean(draws, 0)
  # 4 standard errors of a Bernoulli mean over 20k draws.
  tol = 4 * jnp.sqrt(theta * (1 - theta) / keys.shape[0])
  assert jnp.all(jnp.abs(freq - theta) < tol), (freq, theta)
  assert set(np.unique(np.asarray(draws))) <= {0.0, 1.0}


@pytest.mark.parametrize("estimator,factor", [("prob", lambda t: t), ("ste", lambda t: 1.0)])
def test_estimator_gradients(estimator, factor):
  scores = jnp.array([-2.0, 0.0, 1.5])
  upstream = jnp.array([0.3, -1.0, 2.0])

  def f(s):
    m = masking.masks({"w": s}, jax.random.key(1), "sample", estimator)["w"]
    return jnp.sum(upstream * m)

  theta = jax.nn.sigmoid(scores)
  expected = upstream * factor(theta) * theta * (1 - theta)   # chain rule through sigmoid
  chex.assert_trees_all_close(jax.grad(f)(scores), expected, rtol=1e-6)


def test_modes():
  scores = {"a": jnp.array([-1.0, 0.2, 3.0])}
  chex.assert_trees_all_close(masking.masks(scores, mode="threshold")["a"],
                              jnp.array([0.0, 1.0, 1.0]))
  chex.assert_trees_all_close(masking.masks(scores, mode="expected")["a"],
                              jax.nn.sigmoid(scores["a"]))
  with pytest.raises(ValueError, match="needs a PRNG key"):
    masking.masks(scores, mode="sample")
  with pytest.raises(ValueError, match="unknown mask mode"):
    masking.masks(scores, mode="mean")
  with pytest.raises(ValueError, match="unknown mask estimator"):
    masking.masks(scores, jax.random.key(0), estimator="reinforce")


def test_sample_binary_is_bool_and_leafwise_independent():
  theta = {"a": jnp.full((1000,), 0.5), "b": jnp.full((1000,), 0.5)}
  m = masking.sample_binary(jax.random.key(3), theta)
  assert m["a"].dtype == jnp.bool_
  assert not jnp.array_equal(m["a"], m["b"])
  assert masking.num_weights(theta) == 2000
