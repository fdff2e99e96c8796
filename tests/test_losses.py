import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import losses


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_zero_for_identical_larger_for_shifted(name):
  loss = losses.get_loss(name)
  # Pixel-like scale: per-feature std 0.3, as images in [-1, 1].
  x = 0.3 * jax.random.normal(jax.random.key(0), (32, 16))
  y = 0.3 * jax.random.normal(jax.random.key(1), (32, 16))
  same = loss(x, x)
  fresh = loss(x, y)             # same distribution, other samples
  shifted = loss(x, y + 0.3)     # other distribution
  assert abs(float(same)) < 1e-5
  assert float(shifted) > 2 * float(fresh) > 0


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_finite_gradients(name):
  loss = losses.get_loss(name)
  x = jax.random.normal(jax.random.key(0), (16, 8))
  g = jax.grad(lambda y: loss(x, y))(x + 0.5)
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g).sum()) > 0


def test_moment_matching_hand_computed():
  real = jnp.array([[0.0, 1.0], [2.0, 3.0]])   # mean (1, 2), var (1, 1)
  fake = jnp.array([[1.0, 1.0], [1.0, 1.0]])   # mean (1, 1), var (0, 0)
  # |(0, 1)|^2 + |(1, 1)|^2 = 1 + 2
  np.testing.assert_allclose(losses.moment_matching(real, fake), 3.0)


def test_gaussian_mmd_hand_computed():
  real, fake = jnp.array([[0.0]]), jnp.array([[1.0]])
  # k(x,x) = 1; k(x,y) = exp(-1 / b); MMD^2 = 2 - 2 exp(-1/b), one bandwidth b = 2.
  np.testing.assert_allclose(losses.gaussian_mmd(real, fake, bandwidths=(2.0,)),
                             2 - 2 * np.exp(-0.5), rtol=1e-6)


def test_unknown_loss():
  with pytest.raises(ValueError, match="unknown loss 'wasserstein'"):
    losses.get_loss("wasserstein")
