"""Local objectives: distances between real and generated feature batches.

A plain loss is a pure function ``loss(real_feats, fake_feats) -> scalar`` on ``[batch, dim]``
features (the output of a :mod:`prism_jax.features` extractor). Clients use losses through
:class:`FeatureLoss`, an optax-style ``(init, apply)`` pair that may carry state across local
steps and rounds (the GFMN moving averages) and says what it compares fakes against:
a real feature batch (``real="batch"``) or the client's precomputed real feature
``(mean, var)`` (``real="stats"``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

Loss = Callable[[jax.Array, jax.Array], jax.Array]


class FeatureLoss(NamedTuple):
  """``init(dim) -> state``; ``apply(real, fake_feats, state) -> (loss, state)``."""
  init: Callable[[int], Any]
  apply: Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
  real: str = "batch"          # "batch": real feature batch; "stats": (mean, var) per client


def stateless(loss: Loss) -> FeatureLoss:
  """A plain ``loss(real_feats, fake_feats)`` as a :class:`FeatureLoss` without state."""
  return FeatureLoss(lambda dim: (), lambda real, fake, state: (loss(real, fake), state))


def feature_stats(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and unbiased variance over the batch (GFMN / official code)."""
  return jnp.mean(feats, 0), jnp.var(feats, 0, ddof=1)


class MovingAverageState(NamedTuple):
  v_mean: jax.Array           # [dim] moving average of mu_real - mu_fake
  v_var: jax.Array            # [dim] moving average of var_real - var_fake
  opt_mean: Any
  opt_var: Any


def gfmn_moment_matching(learning_rate: float = 1e-5, b1: float = 0.5,
                         b2: float = 0.999, v_init: str = "zeros", seed: int = 0) -> FeatureLoss:
  """Mean + variance matching with ADAM moving averages (GFMN, Mroueh et al. 2019; PRISM's
  loss, paper Sec. 3 "MMD loss", official code defaults).

  Two linear "nets" ``v_mean, v_var`` track the feature-statistic gaps by one Adam step per
  local iteration on ``||v - (mu_real - mu_fake)||^2 / dim`` (and likewise for the
  variances), with the gaps held constant. The generator loss is the projection
  ``<v_mean, mu_real - mu_fake> + <v_var, var_real - var_fake>`` with ``v`` held constant,
  so its gradient follows the smoothed gap rather than one noisy minibatch estimate. The
  real statistics are precomputed over the client's whole local dataset.

  ``v_init``: ``"zeros"`` (the first step's generator gradient is then zero), or
  ``"torch"``, PyTorch's default ``nn.Linear(dim, 1)`` init U(-1/sqrt(dim), 1/sqrt(dim)) as in
  the official code (drawn from ``seed``; the same for every client).
  """
  if v_init not in ("zeros", "torch"):
    raise ValueError(f"v_init must be 'zeros' or 'torch', got {v_init!r}")
  opt = optax.adam(learning_rate, b1=b1, b2=b2)

  def init(dim: int) -> MovingAverageState:
    if v_init == "zeros":
      v_mean = v_var = jnp.zeros((dim,), jnp.float32)
    else:
      bound = 1.0 / jnp.sqrt(dim)
      k_mean, k_var = jax.random.split(jax.random.key(seed))
      v_mean, v_var = (jax.random.uniform(k, (dim,), jnp.float32, -bound, bound)
                       for k in (k_mean, k_var))
    return MovingAverageState(v_mean, v_var, opt.init(v_mean), opt.init(v_var))

  def track(v, opt_state, gap):
    grad = jax.grad(lambda v: jnp.mean(jnp.square(v - gap)))(v)
    updates, opt_state = opt.update(grad, opt_state, v)
    return optax.apply_updates(v, updates), opt_state

  def apply(real_stats, fake_feats, state: MovingAverageState):
    chex.assert_rank(fake_feats, 2)
    mu_r, var_r = real_stats
    mu_f, var_f = feature_stats(fake_feats)
    v_mean, opt_mean = track(state.v_mean, state.opt_mean, jax.lax.stop_gradient(mu_r - mu_f))
    v_var, opt_var = track(state.v_var, state.opt_var, jax.lax.stop_gradient(var_r - var_f))
    loss = (jnp.dot(jax.lax.stop_gradient(v_mean), mu_r - mu_f)
            + jnp.dot(jax.lax.stop_gradient(v_var), var_r - var_f))
    return loss, MovingAverageState(v_mean, v_var, opt_mean, opt_var)

  return FeatureLoss(init, apply, real="stats")


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


def energy_distance(real_feats: jax.Array, fake_feats: jax.Array) -> jax.Array:
  """Energy distance ``2 E|x - y| - E|x - x'| - E|y - y'|`` (Szekely & Rizzo; the MMD of the
  distance kernel, V-statistic): no bandwidth to tune, and its gradient does not vanish
  for samples far from every real one, unlike a Gaussian kernel's."""
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape_suffix([real_feats, fake_feats], 1)
  scale = jnp.sqrt(jnp.asarray(real_feats.shape[1], real_feats.dtype))  # per-feature units

  def d(a, b):   # from differences: a sample's distance to itself is exactly 0, gradient 0
    sq = jnp.sum(jnp.square(a[:, None] - b[None]), -1)
    return jnp.mean(jnp.sqrt(sq + 1e-12)) / scale

  return 2.0 * d(real_feats, fake_feats) - d(real_feats, real_feats) - d(fake_feats, fake_feats)


LOSSES = {"moment_matching": moment_matching, "gaussian_mmd": gaussian_mmd,
          "energy_distance": energy_distance}
STATEFUL = {"gfmn": gfmn_moment_matching}


def as_feature_loss(loss: Loss | FeatureLoss) -> FeatureLoss:
  return loss if isinstance(loss, FeatureLoss) else stateless(loss)


def get_loss(name: str, **kwargs) -> FeatureLoss:
  """Loss by name with keyword arguments bound (e.g. ``bandwidths`` for ``gaussian_mmd``,
  ``learning_rate`` for ``gfmn``)."""
  if name in STATEFUL:
    return STATEFUL[name](**kwargs)
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES | STATEFUL)}")
  return stateless(functools.partial(LOSSES[name], **kwargs))
