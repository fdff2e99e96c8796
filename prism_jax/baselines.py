"""Server rules of the baselines PRISM is compared with, in the same round machinery.

* ``"fedpm"``: FedPM's Bayesian aggregation (Isik et al., ICLR 2023, "Sparse random networks
  for communication-efficient federated learning"): every keep-probability has a
  ``Beta(a, b)`` posterior; the uploaded masks are Bernoulli observations,
  ``a += sum_k M_k``, ``b += sum_k (1 - M_k)``, and the global theta is the posterior mode
  ``(a - 1) / (a + b - 2)``. The priors are reset to ``Beta(1, 1)`` every ``reset_every``
  rounds (FedPM resets after ``1 / q`` rounds at participation ``q``, so each window sees
  about every client once). Clients are PRISM's; no MADA.
* ``"fedavg"``: dense FedAvg of the same generator, initialised from the same seed, whose
  clients train the weights themselves with the same loss and upload them as float32; the
  server takes the mean. The communication-heavy reference.

Each is a pure function over PyTrees with a leading client axis; their rule objects
(:class:`prism_jax.rules.FedPMRule`, :class:`prism_jax.rules.FedAvgRule`) call them.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from prism_jax import server

def fedpm_reset_every(num_clients: int, per_round: int) -> int:
  """FedPM's prior reset period, ``ceil(1 / q)`` rounds at participation ``q``."""
  return math.ceil(num_clients / per_round)


def beta_init(scores):
  """``Beta(1, 1)`` (uniform) priors, one ``(a, b)`` pair per weight (separate buffers: the
  round step donates its state)."""
  return jax.tree.map(jnp.ones_like, scores), jax.tree.map(jnp.ones_like, scores)


def fedpm_rebuild(beta_state, counts, participants, round_: jax.Array,
                  reset_every: int, eps: float = 0.01):
  """Posterior update from a round's mask counts (:func:`prism_jax.server.tally`, the same
  downlink message as PRISM's); returns ``(theta, beta_state)``.

  ``a += counts``, ``b += participants - counts``, after a reset to ``Beta(1, 1)`` every
  ``reset_every`` rounds. ``theta`` is clipped to ``[eps, 1 - eps]`` so that
  ``logit(theta)`` (the new global scores) is finite.
  """
  fresh = (round_ % reset_every) == 0
  a, b = jax.tree.map(lambda x: jnp.where(fresh, jnp.ones_like(x), x), beta_state)
  n = jnp.asarray(participants, jnp.float32)
  a = jax.tree.map(lambda a_, c: a_ + c.astype(jnp.float32), a, counts)
  b = jax.tree.map(lambda b_, c: b_ + (n - c.astype(jnp.float32)), b, counts)
  # a + b - 2 = (observations since the reset) >= 1, so the mode is defined.
  theta = jax.tree.map(lambda a_, b_: jnp.clip((a_ - 1) / (a_ + b_ - 2), eps, 1 - eps), a, b)
  return theta, (a, b)


def fedpm_update(beta_state, masks, client_weights: jax.Array, round_: jax.Array,
                 reset_every: int, eps: float = 0.01):
  """:func:`fedpm_rebuild` from the bool ``masks [K, ...]`` (``client_weights [K]``: 1 for a
  participant, 0 for an empty slot)."""
  return fedpm_rebuild(beta_state, *server.tally(masks, client_weights), round_, reset_every,
                       eps)


def fedavg_update(uploads, client_weights: jax.Array):
  """Dense FedAvg: the weighted mean of the uploaded weights (clients weigh equally, as
  PRISM's masks do)."""
  w = client_weights / jnp.sum(client_weights)
  return jax.tree.map(lambda u: jnp.tensordot(w, u, axes=1), uploads)
