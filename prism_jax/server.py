"""PRISM server: mask aggregation and MADA (PRISM Algorithm 1, server side).

* :func:`aggregate`: ``theta_hat = sum_k w_k smooth(M_k) / sum_k w_k``, a reduction over the
  leading client axis, where ``smooth`` maps bits 0 -> eps, 1 -> 1 - eps (eps = 0.01 in the
  official code) so that ``logit(theta_hat)`` is finite.
* :func:`mada`: ``lambda = Hamming(M_prev, M_hat)`` between masks sampled from the previous
  and the aggregated global probabilities, then ``s_{t+1} = (1 - lambda) s_t + lambda s_new``
  (Algorithm 1, "MADA"): a big jump in the global mask gets a big step, a small one (clients
  drifting apart under non-IID data and cancelling out) a small step.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from prism_jax import masking


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  mada: bool = True
  smoothing: float = 0.01   # uploaded bit 0 -> smoothing, 1 -> 1 - smoothing

  def __post_init__(self):
    if not 0.0 < self.smoothing < 0.5:
      raise ValueError(f"smoothing must lie in (0, 0.5), got {self.smoothing}")


def smooth(mask: jax.Array, eps: float) -> jax.Array:
  """Bits to probabilities: 0 -> eps, 1 -> 1 - eps."""
  return jnp.where(mask, 1.0 - eps, eps).astype(jnp.float32)


def aggregate(uploads, client_weights: jax.Array, eps: float = 0.01):
  """Global keep-probabilities from uploads with leading client axis ``[K, ...]``.

  A bool leaf is a sampled mask (smoothed, then averaged); a float leaf holds PRISM-alpha
  probabilities (Algorithm 2: averaged, then clipped to ``[eps, 1 - eps]`` like the masks so
  that ``logit`` stays finite). ``client_weights [K]`` is 1 for a participating client and
  0 for an empty slot (or any non-negative aggregation weight).
  """
  w = client_weights / jnp.sum(client_weights)

  def leaf(u):
    if u.dtype == jnp.bool_:
      return jnp.tensordot(w, smooth(u, eps), axes=1)
    return jnp.clip(jnp.tensordot(w, u.astype(jnp.float32), axes=1), eps, 1.0 - eps)

  return jax.tree.map(leaf, uploads)


def scores_from_probs(theta):
  """Inverse sigmoid, ``s = log(theta) - log(1 - theta)``."""
  return jax.tree.map(lambda t: jnp.log(t) - jnp.log1p(-t), theta)


def hamming(mask_a, mask_b) -> jax.Array:
  """Fraction of differing bits between two mask PyTrees (over all weights)."""
  return masking.mean_over_weights(jax.tree.map(jnp.not_equal, mask_a, mask_b))


def mada(key: jax.Array, prev_scores, new_scores):
  """MADA moving average; returns ``(scores, lambda)``."""
  k_prev, k_new = jax.random.split(key)
  lam = hamming(masking.sample_binary(k_prev, masking.keep_prob(prev_scores)),
                masking.sample_binary(k_new, masking.keep_prob(new_scores)))
  mixed = jax.tree.map(lambda s, n: (1.0 - lam) * s + lam * n, prev_scores, new_scores)
  return mixed, lam


def server_update(key: jax.Array, prev_scores, masks, client_weights, cfg: ServerConfig):
  """Aggregate the uploads into new global scores (with MADA if enabled).

  Returns ``(scores, theta_hat, lambda)``; ``lambda`` is 1 without MADA.
  """
  theta_hat = aggregate(masks, client_weights, cfg.smoothing)
  new_scores = scores_from_probs(theta_hat)
  if not cfg.mada:
    return new_scores, theta_hat, jnp.ones((), jnp.float32)
  scores, lam = mada(key, prev_scores, new_scores)
  return scores, theta_hat, lam
