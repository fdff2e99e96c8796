"""Local objectives: distances between real and generated feature batches.

Every loss is a pure function ``loss(real_feats, fake_feats) -> scalar`` on ``[batch, dim]``
features (the output of a :mod:`prism_jax.features` extractor), so losses and extractors
compose freely and are ``vmap``-able over clients.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def moment_matching(real_feats: jax.Array, fake_feats: jax.Array) -> jax.Array:
  """Mean + variance feature matching, the PRISM / GFMN objective.

  ``||mu_r - mu_f||^2 + ||var_r - var_f||^2`` over the batch: an MMD with a linear plus a
  quadratic kernel on the features (paper Sec. 3, "MMD loss").
  """
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape_suffix([real_feats, fake_feats], 1)
  mean_gap = jnp.mean(real_feats, 0) - jnp.mean(fake_feats, 0)
  var_gap = jnp.var(real_feats, 0) - jnp.var(fake_feats, 0)
  return jnp.sum(jnp.square(mean_gap)) + jnp.sum(jnp.square(var_gap))


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
  return jnp.maximum(sq, 0.0)


def gaussian_mmd(real_feats: jax.Array, fake_feats: jax.Array,
                 bandwidths: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0)) -> jax.Array:
  """Multi-bandwidth Gaussian-kernel MMD^2 (biased V-statistic, so exactly 0 for x == y).

  ``k(x, y) = sum_b exp(-||x - y||^2 / (b * D))`` with ``D`` the feature dimension, so the
  bandwidths are in units of mean squared difference per feature and the same defaults work
  for pixels and for learned features.
  """
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape_suffix([real_feats, fake_feats], 1)
  dim = real_feats.shape[1]
  scales = jnp.asarray(bandwidths, real_feats.dtype) * dim

  def k(a, b):
    d2 = _sq_dists(a, b)
    return jnp.mean(jnp.sum(jnp.exp(-d2[..., None] / scales), -1))

  return k(real_feats, real_feats) + k(fake_feats, fake_feats) - 2.0 * k(real_feats, fake_feats)


LOSSES = {"moment_matching": moment_matching, "gaussian_mmd": gaussian_mmd}


def get_loss(name: str, **kwargs) -> Loss:
  """Loss by name, with keyword arguments bound (e.g. ``bandwidths`` for ``gaussian_mmd``)."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
  return functools.partial(LOSSES[name], **kwargs)
