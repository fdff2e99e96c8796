"""Stochastic masks over frozen random weights (PRISM, arXiv 2503.08085, Sec. 3).

Each frozen weight ``w`` has a trainable score ``s``; ``theta = sigmoid(s)`` is the
probability that ``w`` is kept. The forward pass uses ``w * m`` with a mask ``m`` that is
either sampled (``m ~ Bernoulli(theta)``, training), thresholded (``theta > 0.5``) or the
expected mask (``m = theta``). Everything here is a pure function over PyTrees of scores.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Estimator = Literal["prob", "ste"]
MaskMode = Literal["sample", "threshold", "expected"]

ESTIMATORS = ("prob", "ste")
MASK_MODES = ("sample", "threshold", "expected")


def keep_prob(scores):
  """theta = sigmoid(score), leaf-wise."""
  return jax.tree.map(jax.nn.sigmoid, scores)


def bernoulli_with_grad(key: jax.Array, theta: jax.Array,
                        estimator: Estimator = "prob") -> jax.Array:
  """Samples ``m ~ Bernoulli(theta)`` with a surrogate gradient for ``theta``.

  ``estimator``:
    * ``"prob"``: the official PRISM estimator; d loss/d theta = (d loss/d m) * theta.
      Implemented as ``m + theta^2/2 - stop_grad(theta^2/2)`` (forward value ``m``).
    * ``"ste"``: plain straight-through; d loss/d theta = d loss/d m.
  """
  return with_estimator(jax.random.bernoulli(key, theta), theta, estimator)


def with_estimator(m: jax.Array, theta: jax.Array, estimator: Estimator = "prob") -> jax.Array:
  """A drawn binary mask ``m`` (forward value) with ``estimator``'s gradient for ``theta``
  (:func:`bernoulli_with_grad`)."""
  m = m.astype(theta.dtype)
  if estimator == "prob":
    surrogate = 0.5 * jnp.square(theta)
  elif estimator == "ste":
    surrogate = theta
  else:
    raise ValueError(f"unknown mask estimator {estimator!r}; choose one of {ESTIMATORS}")
  return m + surrogate - jax.lax.stop_gradient(surrogate)


def leaf_keys(key: jax.Array, tree):
  """One independent PRNG key per leaf of ``tree`` (same structure)."""
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def masks(scores, key: jax.Array | None = None, mode: MaskMode = "sample",
          estimator: Estimator = "prob", given=None):
  """Mask PyTree for ``scores`` (same structure, float dtype, differentiable).

  ``mode="sample"`` needs ``key``, or ``given`` binary masks (a recorded draw replayed,
  with the estimator's gradient); ``"threshold"`` keeps weights with theta > 0.5;
  ``"expected"`` uses theta itself (the mean network).
  """
  theta = keep_prob(scores)
  if mode == "sample" and given is not None:
    return jax.tree.map(lambda m, t: with_estimator(m, t, estimator), given, theta)
  if mode == "sample":
    if key is None:
      raise ValueError("mask mode 'sample' needs a PRNG key")
    return jax.tree.map(lambda k, t: bernoulli_with_grad(k, t, estimator),
                        leaf_keys(key, theta), theta)
  if mode == "threshold":
    return jax.tree.map(lambda t: (t > 0.5).astype(t.dtype), theta)
  if mode == "expected":
    return theta
  raise ValueError(f"unknown mask mode {mode!r}; choose one of {MASK_MODES}")


def sample_binary(key: jax.Array, theta):
  """Binary masks ``M ~ Bernoulli(theta)`` as bool PyTree: what a client uploads."""
  return jax.tree.map(lambda k, t: jax.random.bernoulli(k, t), leaf_keys(key, theta), theta)


def apply_masks(weights, mask_tree):
  """Effective weights ``W_init * m`` (Eq. 1 of the paper), leaf-wise."""
  return jax.tree.map(lambda w, m: w * m.astype(w.dtype), weights, mask_tree)


def num_weights(tree) -> int:
  """Number of masked weights (scalars) in a PyTree."""
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def mean_over_weights(tree) -> jax.Array:
  """Mean of all scalars of a PyTree (bools count as 0 / 1), weighting every weight equally."""
  return sum(jnp.sum(x, dtype=jnp.float32) for x in jax.tree.leaves(tree)) / num_weights(tree)
