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
  """``init(dim, client=0) -> state``; ``apply(real, fake_feats, state) -> (loss, state)``.
  ``client``: the client's index, for states drawn per client (may be traced)."""
  init: Callable[[int], Any]
  apply: Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
  real: str = "batch"          # "batch": real feature batch; "stats": (mean, var) per client


def stateless(loss: Loss) -> FeatureLoss:
  """A plain ``loss(real_feats, fake_feats)`` as a :class:`FeatureLoss` without state."""
  return FeatureLoss(lambda dim, client=0: (),
                     lambda real, fake, state: (loss(real, fake), state))


@jax.custom_vjp
def feature_stats(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-feature mean and unbiased variance over the batch (GFMN / official code).

  The sums over the batch are matrix-vector products and the gradient is written out,
  ``d mu / d f_i = 1 / n`` and ``d var / d f_i = 2 (f_i - mu) / (n - 1)`` (the mean's term
  cancels: the deviations sum to zero), so nothing reduces over the batch axis: XLA:CPU's
  library reductions over the leading axis of a ``[64, 303104]`` VGG19 feature batch take
  0.4 s per step, against 0.06 s for this form (docs/performance.md)."""
  n = feats.shape[0]
  w = jnp.full((n,), 1.0 / n, feats.dtype)
  mu = w @ feats
  return mu, (w @ jnp.square(feats - mu)) * (n / (n - 1))


def _feature_stats_fwd(feats):
  stats = feature_stats(feats)
  return stats, (feats, stats[0])


def _feature_stats_bwd(res, grads):
  feats, mu = res
  n = feats.shape[0]
  return (grads[0] / n + grads[1] * (2.0 / (n - 1)) * (feats - mu),)


feature_stats.defvjp(_feature_stats_fwd, _feature_stats_bwd)


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

  ``v_init``: ``"zeros"``, or ``"torch"``, PyTorch's default ``nn.Linear(dim, 1)`` init
  U(-1/sqrt(dim), 1/sqrt(dim)) as in the official code, where every client builds its own
  nets (drawn from ``seed`` and the client's index). With zeros the first step's generator
  gradient is not zero: the loss projects on ``v`` after its Adam step, which moves every
  coordinate by about the learning rate towards the gap (``sign(gap) * lr``).
  """
  if v_init not in ("zeros", "torch"):
    raise ValueError(f"v_init must be 'zeros' or 'torch', got {v_init!r}")
  opt = optax.adam(learning_rate, b1=b1, b2=b2)

  def init(dim: int, client=0) -> MovingAverageState:
    if v_init == "zeros":
      v_mean = v_var = jnp.zeros((dim,), jnp.float32)
    else:
      bound = 1.0 / jnp.sqrt(dim)
      k_mean, k_var = jax.random.split(jax.random.fold_in(jax.random.key(seed), client))
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


def _l1_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.sum(jnp.abs(a[:, None] - b[None]), -1)


def _entropic_ot(a: jax.Array, b: jax.Array, eps: float, iters: int, cost: str,
                 unroll: int | bool = 1) -> jax.Array:
  """Entropic optimal transport ``OT_eps`` between uniform batches (log-domain Sinkhorn).

  ``a: [..., n, D]``, ``b: [..., m, D]``: leading axes are independent problems solved in one
  loop. The cost is the squared (``"sq"``) or absolute (``"l1"``) difference, averaged over
  features. The value is the dual objective at the potentials reached; its gradient is the
  envelope theorem's ``sum_ij P_ij grad C_ij`` with the plan ``P`` held constant, so no
  gradient flows through the iterations.
  """
  dists = _sq_dists if cost == "sq" else _l1_dists
  c_ab = jnp.vectorize(dists, signature="(n,d),(m,d)->(n,m)")(a, b) / a.shape[-1]
  log_wa, log_wb = -jnp.log(a.shape[-2]), -jnp.log(b.shape[-2])
  c = jax.lax.stop_gradient(c_ab)

  def body(_, fg):
    f, g = fg
    f = -eps * jax.nn.logsumexp(log_wb + (g[..., None, :] - c) / eps, axis=-1)
    g = -eps * jax.nn.logsumexp(log_wa + (f[..., :, None] - c) / eps, axis=-2)
    return f, g

  # Potentials start from the cost so that they carry its sharding / vmap axis types.
  f, g = jax.lax.fori_loop(0, iters, body,
                           (jnp.zeros_like(c[..., 0]), jnp.zeros_like(c[..., 0, :])), unroll=unroll)
  plan = jnp.exp(log_wa + log_wb + (f[..., :, None] + g[..., None, :] - c) / eps)
  surrogate = jnp.sum(plan * c_ab, (-2, -1))
  return (jnp.mean(f, -1) + jnp.mean(g, -1) + surrogate - jax.lax.stop_gradient(surrogate))


def sinkhorn_divergence(real_feats: jax.Array, fake_feats: jax.Array, eps: float = 0.01,
                        iters: int = 100, cost: str = "sq", unroll: int | bool = True
                        ) -> jax.Array:
  """Debiased Sinkhorn divergence ``OT(x, y) - (OT(x, x) + OT(y, y)) / 2`` (Genevay et al.
  2018; Feydy et al. 2019) between the real and the generated batch.

  It lies between optimal transport (``eps -> 0``) and the energy distance (``eps -> inf``).
  With a small ``eps`` each generated sample is pulled towards the few real samples it is
  matched with, not towards a kernel-weighted crowd of them as with a Gaussian MMD: on
  pixels it gives whole digit shapes where the MMD gives sharp fragments, at the price of
  soft strokes (docs/default.md). ``cost``: ``"sq"`` or ``"l1"``.

  The three transport problems run in one loop, unrolled by default (``unroll``, as
  ``lax.fori_loop`` takes it): XLA:CPU runs a loop nested in the local steps' ``lax.scan``
  slowly: unrolled, the default curriculum's transport step took 0.59 s instead of 0.86 s
  (timed with ``benchmarks.loss_step_cost.round_seconds`` at 4 and 12 local steps; its
  JSON's rows predate the change).
  """
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape_suffix([real_feats, fake_feats], 1)
  if cost not in ("sq", "l1"):
    raise ValueError(f"sinkhorn cost must be 'sq' or 'l1', got {cost!r}")
  if not eps > 0:
    raise ValueError(f"sinkhorn eps must be > 0, got {eps}")
  ot = functools.partial(_entropic_ot, eps=eps, iters=iters, cost=cost, unroll=unroll)
  if real_feats.shape != fake_feats.shape:   # three problems of different sizes
    return (ot(real_feats, fake_feats)
            - 0.5 * (ot(real_feats, real_feats) + ot(fake_feats, fake_feats)))
  # The three problems in one loop: a third of the iterations' fixed costs.
  xy_xx_yy = ot(jnp.stack([real_feats, real_feats, fake_feats]),
                jnp.stack([fake_feats, real_feats, fake_feats]))
  return xy_xx_yy[0] - 0.5 * (xy_xx_yy[1] + xy_xx_yy[2])


def marginal_w2(real_feats: jax.Array, fake_feats: jax.Array, stride: int = 1) -> jax.Array:
  """Squared 1-D Wasserstein-2 distance between the pooled values of all features (for
  pixels: the intensity histograms), by sorting. It asks for as many dark, grey and white
  pixels as the data has, which keeps a transport loss's matched averages from turning
  grey; it says nothing about where they lie. ``stride``: compare every ``stride``-th
  pooled value only (:func:`_sorted_w2`)."""
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape([real_feats, fake_feats])
  return _sorted_w2(real_feats.reshape(-1), fake_feats.reshape(-1), stride)


def _sorted_w2(a: jax.Array, b: jax.Array, stride: int = 1) -> jax.Array:
  """Squared W2 between two equal-size samples on the line: the sorted values paired.

  With ``stride > 1`` only every ``stride``-th value of each enters, a subsample of the
  same histogram at ``stride`` times less sorting (full sorts cost most of ``:ot``'s loss);
  a stride coprime to the image width takes different positions in every image of the
  batch, so no position goes unconstrained."""
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  a, b = a[::stride], b[::stride]
  return jnp.mean(jnp.square(jnp.sort(a) - jnp.sort(b)))


def edge_w2(real_feats: jax.Array, fake_feats: jax.Array, stride: int = 1) -> jax.Array:
  """Squared W2 between the two batches' histograms of horizontal and vertical pixel
  differences, features read as square single-channel images: real strokes end in steps,
  soft ones in ramps, which this tells apart wherever they lie. ``stride``: as in
  :func:`marginal_w2`."""
  chex.assert_rank([real_feats, fake_feats], 2)
  chex.assert_equal_shape([real_feats, fake_feats])
  side = int(round(real_feats.shape[1] ** 0.5))
  if side * side != real_feats.shape[1]:
    raise ValueError(f"edge_w2 needs square single-channel images, got {real_feats.shape[1]} "
                     "features")

  def steps(x):
    x = x.reshape(-1, side, side)
    return jnp.concatenate([(x[:, 1:] - x[:, :-1]).reshape(-1),
                            (x[:, :, 1:] - x[:, :, :-1]).reshape(-1)])

  return _sorted_w2(steps(real_feats), steps(fake_feats), stride)


LOSSES = {"moment_matching": moment_matching, "gaussian_mmd": gaussian_mmd,
          "energy_distance": energy_distance, "sinkhorn": sinkhorn_divergence,
          "marginal_w2": marginal_w2, "edge_w2": edge_w2}
STATEFUL = {"gfmn": gfmn_moment_matching}


def as_feature_loss(loss: Loss | FeatureLoss) -> FeatureLoss:
  return loss if isinstance(loss, FeatureLoss) else stateless(loss)


def weighted_sum(**terms) -> FeatureLoss:
  """``sum_i weight_i * loss_i`` of plain losses: ``terms`` maps a loss name to its keyword
  arguments plus ``weight`` (default 1), e.g. ``sinkhorn={"eps": 0.01},
  marginal_w2={"weight": 1.0}`` (config: ``loss.name="sum"``, ``loss.kwargs.<name>.<arg>``)."""
  if not terms:
    raise ValueError("loss 'sum' needs at least one term in loss.kwargs")
  parts = []
  for name, kwargs in terms.items():
    if name not in LOSSES:
      raise ValueError(f"loss 'sum': unknown term {name!r}; choose from {sorted(LOSSES)}")
    kwargs = dict(kwargs)
    weight = float(kwargs.pop("weight", 1.0))
    if weight:                              # a zero weight drops the term (not computed)
      parts.append((weight, functools.partial(LOSSES[name], **kwargs)))
  if not parts:
    raise ValueError("loss 'sum': every term has weight 0")
  return stateless(lambda real, fake: sum(w * loss(real, fake) for w, loss in parts))


def get_loss(name: str, **kwargs) -> FeatureLoss:
  """Loss by name with keyword arguments bound (e.g. ``bandwidths`` for ``gaussian_mmd``,
  ``learning_rate`` for ``gfmn``; ``"sum"``: see :func:`weighted_sum`)."""
  if name == "sum":
    return weighted_sum(**kwargs)
  if name in STATEFUL:
    return STATEFUL[name](**kwargs)
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES | STATEFUL) + ['sum']}")
  return stateless(functools.partial(LOSSES[name], **kwargs))
