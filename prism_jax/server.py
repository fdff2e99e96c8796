"""PRISM server: mask aggregation and MADA (PRISM Algorithm 1, server side).

* :func:`tally` and :func:`probs_from_counts` (together :func:`aggregate`):
  ``theta_hat = mean_k smooth(M_k)`` over the participants, a reduction over the leading
  client axis to per-weight counts of ones, where ``smooth`` maps bits 0 -> eps,
  1 -> 1 - eps (eps = 0.01 in the official code) so that ``logit(theta_hat)`` is finite.
* :func:`mada`: ``lambda = Hamming(M_prev, M_hat)`` between masks sampled from the previous
  and the aggregated global probabilities, then ``s_{t+1} = (1 - lambda) s_t + lambda s_new``
  (Algorithm 1, "MADA"): a big jump in the global mask gets a big step, a small one (clients
  drifting apart under non-IID data and cancelling out) a small step.
* :func:`rebuild`: the new global scores from the previous ones and the round's
  :class:`Broadcast` (counts, participants, lambda), the downlink message that replaces the
  float32 scores (:mod:`prism_jax.downlink`); server and clients run the same function.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import generator, masking


LAMBDA_COUNTS = ("weights", "state_dict")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  mada: bool = True
  smoothing: float = 0.01   # uploaded bit 0 -> smoothing, 1 -> 1 - smoothing
  # What MADA's Hamming distance averages over: every weight once ("weights"), or, as the
  # official ``compare_global_mask`` does, every entry of the generator's state dict, which
  # lists each residual-block convolution twice (``conv1`` / ``model.3``, ...), each with its
  # own Bernoulli draw ("state_dict"; :func:`prism_jax.generator.state_dict_copies`).
  lambda_counts: str = "weights"

  def __post_init__(self):
    if not 0.0 < self.smoothing < 0.5:
      raise ValueError(f"smoothing must lie in (0, 0.5), got {self.smoothing}")
    if self.lambda_counts not in LAMBDA_COUNTS:
      raise ValueError(f"lambda_counts must be one of {LAMBDA_COUNTS}, got "
                       f"{self.lambda_counts!r}")


@flax.struct.dataclass
class Broadcast:
  """What the server sends after a round instead of float32 scores: per weight, the number
  of participants whose uploaded bit was 1 (int32, 0..K; PRISM-alpha's probability layers:
  the new scores themselves, float32), the number of participants ``K`` (static), and
  MADA's lambda (1 without MADA). With the previous global scores, which every client
  holds, it determines the new ones exactly (:func:`rebuild`)."""
  counts: Any
  participants: int = flax.struct.field(pytree_node=False)
  lam: jax.Array = None     # float32 []
  rotation: jax.Array = None   # PBM (prism_jax.pbm): the round's rotation key data, uint32


def tally(uploads, client_weights: jax.Array):
  """``(counts, participants)`` from uploads with leading client axis ``[K, ...]``.

  ``client_weights [K]`` is 1 for a participating client and 0 for an empty slot. A bool
  leaf (a sampled mask) gives int32 counts of ones; a float leaf (PRISM-alpha's
  probabilities, Algorithm 2) the participants' mean.
  """
  present = client_weights > 0
  n = jnp.sum(present, dtype=jnp.int32)

  def leaf(u):
    if u.dtype == jnp.bool_:
      return jnp.sum(u & present.reshape(-1, *[1] * (u.ndim - 1)), axis=0, dtype=jnp.int32)
    w = present.astype(jnp.float32) / n
    return jnp.tensordot(w, u.astype(jnp.float32), axes=1)

  return jax.tree.map(leaf, uploads), n


def probs_from_counts(counts, participants, eps: float = 0.01):
  """Global keep-probabilities ``theta_hat = mean_k smooth(M_k)`` from the counts:
  ``eps + (1 - 2 eps) c / K`` for mask counts; PRISM-alpha's mean probabilities clipped to
  ``[eps, 1 - eps]`` like the masks so that ``logit`` stays finite."""
  n = jnp.asarray(participants, jnp.float32)

  def leaf(c):
    if jnp.issubdtype(c.dtype, jnp.integer):
      return eps + (1.0 - 2.0 * eps) * (c.astype(jnp.float32) / n)
    return jnp.clip(c, eps, 1.0 - eps)

  return jax.tree.map(leaf, counts)


def aggregate(uploads, client_weights: jax.Array, eps: float = 0.01):
  """Global keep-probabilities from uploads ``[K, ...]`` (:func:`tally`, then
  :func:`probs_from_counts`); bits are smoothed, 0 -> eps and 1 -> 1 - eps."""
  return probs_from_counts(*tally(uploads, client_weights), eps)


def scores_from_probs(theta):
  """Inverse sigmoid, ``s = log(theta) - log(1 - theta)``."""
  return jax.tree.map(lambda t: jnp.log(t) - jnp.log1p(-t), theta)


def hamming(mask_a, mask_b) -> jax.Array:
  """Fraction of differing bits between two mask PyTrees (over all their bits: a leaf
  holding several mask pairs on a leading axis counts that many times)."""
  return masking.mean_over_weights(jax.tree.map(jnp.not_equal, mask_a, mask_b))


def mada_lambda(key: jax.Array, prev_scores, new_scores, copies=None) -> jax.Array:
  """MADA's ``lambda``: the Hamming distance between masks sampled from the previous and
  the aggregated global probabilities (Algorithm 1). ``copies`` (PyTree of ints, None: 1):
  how many independent pairs each layer contributes (:attr:`ServerConfig.lambda_counts`)."""
  k_prev, k_new = jax.random.split(key)
  if copies is None:
    return hamming(masking.sample_binary(k_prev, masking.keep_prob(prev_scores)),
                   masking.sample_binary(k_new, masking.keep_prob(new_scores)))
  theta = lambda s: jax.tree.map(lambda x, c: jnp.broadcast_to(  # noqa: E731
      jax.nn.sigmoid(x), (c, *x.shape)), s, copies)
  return hamming(masking.sample_binary(k_prev, theta(prev_scores)),
                 masking.sample_binary(k_new, theta(new_scores)))


def lambda_copies(cfg: ServerConfig, scores):
  """The ``copies`` of :func:`mada_lambda` that ``cfg.lambda_counts`` asks for."""
  return None if cfg.lambda_counts == "weights" else generator.state_dict_copies(scores)


def mix(prev_scores, new_scores, lam: jax.Array):
  """MADA's moving average ``s_{t+1} = (1 - lambda) s_t + lambda s_new``."""
  return jax.tree.map(lambda s, n: (1.0 - lam) * s + lam * n, prev_scores, new_scores)


def mada(key: jax.Array, prev_scores, new_scores):
  """MADA moving average; returns ``(scores, lambda)``."""
  lam = mada_lambda(key, prev_scores, new_scores)
  return mix(prev_scores, new_scores, lam), lam


def logit_table(participants: int, eps: float) -> np.ndarray:
  """``logit(eps + (1 - 2 eps) c / K)`` for ``c = 0..K``, in float64 on the host, rounded
  to float32: the new scores a count maps to, the same constants in every program."""
  theta = eps + (1.0 - 2.0 * eps) * np.arange(participants + 1, dtype=np.float64) / participants
  return (np.log(theta) - np.log1p(-theta)).astype(np.float32)


def make_broadcast(counts, participants: int, lam: jax.Array, eps: float) -> Broadcast:
  """The round's broadcast from :func:`tally`'s counts: PRISM-alpha's mean probabilities
  become their new scores (float32), so that no client evaluates a logarithm."""
  leaf = lambda c: c if jnp.issubdtype(c.dtype, jnp.integer) else scores_from_probs(   # noqa: E731
      jnp.clip(c, eps, 1.0 - eps))
  return Broadcast(jax.tree.map(leaf, counts), participants, lam)


def rebuild(prev_scores, bcast: Broadcast, cfg: ServerConfig):
  """The new global scores from the previous ones and a round's :class:`Broadcast`: the one
  rule that the server (its own state, inside the jitted round) and every client (from the
  downlink message) apply. Mask counts map to scores through :func:`logit_table` (a lookup
  of host constants, not a logarithm the compiler may evaluate differently in differently
  fused programs), so the server and the clients hold the same scores bit for bit."""
  table = jnp.asarray(logit_table(bcast.participants, cfg.smoothing))
  new_scores = jax.tree.map(
      lambda c: table[c] if jnp.issubdtype(c.dtype, jnp.integer) else c, bcast.counts)
  return mix(prev_scores, new_scores, bcast.lam) if cfg.mada else new_scores
