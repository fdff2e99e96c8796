"""The Poisson binomial mechanism (PBM) for 1-bit uploads under secure aggregation.

Mechanism (Chen, Ozgur, Kairouz, "The Poisson Binomial Mechanism for Unbiased Federated
Learning with Secure Aggregation", ICML 2022, Algorithm 1 with one binomial trial, m = 1):
a client clips its update ``x`` (local theta minus the broadcast global theta) to L2 norm
``C``, rotates it with the round's shared random rotation (:func:`rotation`: a random
permutation, random signs and a Hadamard transform per block, so every coordinate is about
``|x| / sqrt(d)``), clips each rotated coordinate to ``[-c, c]`` and uploads one bit per
coordinate, ``Bernoulli(1/2 + b * y_j / c)``. The server sees only the per-coordinate sum
of the participants' bits (secure aggregation) and forms the unbiased estimate of the mean
update, ``c / (n b) * (S - n / 2)``, rotated back (:func:`decode`).

Accounting (derived here; an upper bound, not the paper's Theorem, whose constants were not
available to check against). Neighbours: one participant's update replaced by another
(client level, replace-one, ``n`` participants summed, honest-but-curious server that sees
only the sums). Every other participant's bit is a mixture: with probability ``1 - 2b`` a
fair coin, else a bit that depends on its data, since ``1/2 + b u = (1 - 2b) / 2 +
2b q`` with ``q in [0, 1]``. Conditioning on which coins are fair (independent of the
replaced client, so it can only increase the divergence) and shifting away the rest, one
coordinate's Renyi divergence of order ``alpha`` is at most

    eps_1(alpha; p, p') = 1 / (alpha - 1) * log E_K exp((alpha - 1) D_alpha(
        Bern(p) + Bin(K, 1/2) || Bern(p') + Bin(K, 1/2))),   K ~ Bin(n - 1, 1 - 2b),

computed exactly (:func:`coordinate_rdp`; ``D`` is non-increasing in ``K``, which bounds
the skipped ``K``). Coordinates are independent given the inputs, so the round's RDP is the
sum over coordinates, at most ``kappa(alpha) * |y - y'|^2 / c^2 <= 4 kappa(alpha) (C / c)^2``,
where ``kappa`` is the largest ``eps_1 / (u - u')^2`` over pairs of normalised coordinates
``u = y / c`` on a grid (:func:`rdp_per_round`). Rounds compose (RDP adds); no amplification
by client sampling is claimed. ``(epsilon, delta)`` comes from dp-accounting's RDP
conversion. Uploads stay one bit per (rotated) coordinate.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import special, stats

from prism_jax import masking

ORDERS = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0,
          32.0, 48.0, 64.0, 128.0, 256.0)
B_MAX = 0.25          # the paper's range for the bias parameter (theta there): (0, 1/4]
B_MIN = 1e-4          # calibration's floor: below it the estimate is noise at any scale
BLOCK = 4096          # Hadamard block of the rotation (padding < one block)
GRID = np.linspace(-1.0, 1.0, 5)   # normalised coordinates whose pairs bound kappa ...
CLOSE = 0.05                       # ... with pairs this close around them (the local slope)


def validate(b: float, clip_norm: float, coord_clip: float, participants: int) -> None:
  """Rejects impossible mechanism settings, naming the parameter and its bound."""
  if not 0.0 < b <= B_MAX:
    raise ValueError(f"pbm b must lie in (0, {B_MAX}] (the mechanism's range), got {b}")
  if not clip_norm > 0:
    raise ValueError(f"pbm clip_norm C must be > 0, got {clip_norm}")
  if not coord_clip > 0:
    raise ValueError(f"pbm coordinate clip c must be > 0, got {coord_clip}")
  if participants < 2:
    raise ValueError(f"pbm needs >= 2 participants summed per round, got {participants}")


@dataclasses.dataclass(frozen=True)
class Mechanism:
  """The mechanism's parameters (static): bias ``b``, update clip norm ``C`` and rotated
  coordinate clip ``c`` (:func:`coordinate_clip`)."""
  b: float
  clip_norm: float
  coord_clip: float

  def __post_init__(self):
    validate(self.b, self.clip_norm, self.coord_clip, 2)

  @classmethod
  def for_model(cls, b: float, clip_rms: float, num_weights: int, spread: float = 3.0):
    """The mechanism with :func:`clips` for a model of ``num_weights`` weights."""
    return cls(b, *clips(clip_rms, num_weights, spread))

  def epsilon(self, participants: list[int], delta: float) -> float:
    """``epsilon`` at ``delta`` after rounds that summed ``participants[i]`` clients each."""
    return epsilon_of_rounds(participants, self.b, self.clip_norm, self.coord_clip, delta)

  def describe(self) -> str:
    return (f"Poisson binomial mechanism: b {self.b:.4g}, update clip C {self.clip_norm:.4g}, "
            f"coordinate clip c {self.coord_clip:.4g}")


def clips(clip_rms: float, num_weights: int, spread: float = 3.0) -> tuple[float, float]:
  """``(C, c)``: ``C = clip_rms * sqrt(d)`` (a per-weight RMS of the update) and the rotated
  coordinate clip :func:`coordinate_clip` over the padded coordinates."""
  clip_norm = clip_rms * math.sqrt(num_weights)
  return clip_norm, coordinate_clip(clip_norm, padded_size(num_weights), spread)


# ---------------------------------------------------------------------------- rotation
def block_size(d: int) -> int:
  """The Hadamard block for ``d`` coordinates: up to :data:`BLOCK`, and at most ``d / 16``
  so that padding (one bit per padded coordinate too) stays within about 6%."""
  return min(BLOCK, 1 << max(d // 16, 1).bit_length() - 1)


def padded_size(d: int, block: int | None = None) -> int:
  """Coordinates after rotation: ``d`` padded to whole Hadamard blocks (one bit each)."""
  block = block or block_size(d)
  return -(-d // block) * block


def rotation(key: jax.Array, d: int, block: int | None = None):
  """The round's shared rotation ``(perm, signs)`` of ``d`` coordinates (derived from a key
  both sides know): a random permutation of the padded coordinates, random signs, then a
  normalised Hadamard transform per block (:func:`rotate`). Orthogonal, so ``|Rx| = |x|``."""
  n = padded_size(d, block)
  k_perm, k_sign = jax.random.split(key)
  return jax.random.permutation(k_perm, n), jax.random.rademacher(k_sign, (n,), jnp.float32)


def _hadamard(x: jax.Array) -> jax.Array:
  """Normalised fast Walsh-Hadamard transform over the last axis (a power of 2); its own
  inverse."""
  n = x.shape[-1]
  h = 1
  while h < n:
    y = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
    x = jnp.stack([y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]], -2)
    x = x.reshape(*x.shape[:-3], n)
    h *= 2
  return x / jnp.sqrt(jnp.asarray(n, x.dtype))


def rotate(x: jax.Array, rot, block: int | None = None) -> jax.Array:
  """``[d] -> [padded]``: pad, permute, flip signs, Hadamard per block."""
  perm, signs = rot
  n, block = perm.shape[0], block or block_size(x.shape[0])
  y = jnp.zeros((n,), x.dtype).at[: x.shape[0]].set(x)[perm] * signs
  return _hadamard(y.reshape(n // block, block)).reshape(n)


def unrotate(y: jax.Array, rot, d: int, block: int | None = None) -> jax.Array:
  """The inverse of :func:`rotate`, truncated to the first ``d`` coordinates."""
  perm, signs = rot
  n, block = perm.shape[0], block or block_size(d)
  z = _hadamard(y.reshape(n // block, block)).reshape(n) * signs
  return jnp.zeros((n,), y.dtype).at[perm].set(z)[:d]


# ------------------------------------------------------------------- client and server
def clip_l2(x: jax.Array, clip_norm: float) -> jax.Array:
  return x * jnp.minimum(1.0, clip_norm / jnp.maximum(jnp.linalg.norm(x), 1e-12))


def encode(key: jax.Array, update: jax.Array, rot, clip_norm: float, coord_clip: float,
           b: float) -> jax.Array:
  """A client's upload: one bit per rotated coordinate (bool ``[padded]``)."""
  y = jnp.clip(rotate(clip_l2(update, clip_norm), rot), -coord_clip, coord_clip)
  return jax.random.bernoulli(key, 0.5 + b * y / coord_clip)


def decode(sums: jax.Array, participants, rot, d: int, coord_clip: float,
           b: float) -> jax.Array:
  """The unbiased estimate of the participants' mean update from the per-coordinate sums of
  their bits (all the server sees): ``c / (n b) * (S - n / 2)``, rotated back."""
  n = jnp.asarray(participants, jnp.float32)
  y = coord_clip / (n * b) * (sums.astype(jnp.float32) - n / 2)
  return unrotate(y, rot, d)


def client_upload(key: jax.Array, local_scores, global_scores, rot, mech: Mechanism):
  """A PRISM client's PBM upload: the bits of its update ``theta_k - theta`` (all weights
  as one vector, in PyTree order)."""
  theta_k, _ = ravel_pytree(masking.keep_prob(local_scores))
  theta, _ = ravel_pytree(masking.keep_prob(global_scores))
  return encode(key, theta_k - theta, rot, mech.clip_norm, mech.coord_clip, mech.b)


def new_scores(prev_scores, counts: jax.Array, participants: int, rot, mech: Mechanism,
               eps: float = 0.01):
  """The global scores the round's bit sums lead to (before MADA): ``theta + mean update``,
  clipped to ``[eps, 1 - eps]`` so that ``logit`` stays finite."""
  theta, unravel = ravel_pytree(masking.keep_prob(prev_scores))
  theta = jnp.clip(theta + decode(counts, participants, rot, theta.shape[0], mech.coord_clip,
                                  mech.b), eps, 1.0 - eps)
  return unravel(jnp.log(theta) - jnp.log1p(-theta))


# ------------------------------------------------------------------------- accounting
def _log_binom_half(k: int) -> np.ndarray:
  """``log Bin(s; k, 1/2)`` for ``s = 0..k``."""
  s = np.arange(k + 1)
  return special.gammaln(k + 1) - special.gammaln(s + 1) - special.gammaln(k - s + 1) \
      - k * math.log(2)


def _log_pair(k: int, p: np.ndarray) -> np.ndarray:
  """``log P(Bern(p) + Bin(k, 1/2) = s)``, ``s = 0..k+1``, for each ``p`` (``[..., k+2]``)."""
  lb = np.concatenate([_log_binom_half(k), [-np.inf]])        # Bin(k) at s
  lb_prev = np.concatenate([[-np.inf], _log_binom_half(k)])   # Bin(k) at s - 1
  p = np.asarray(p)[..., None]
  return np.logaddexp(np.log(p) + lb_prev, np.log1p(-p) + lb)


def renyi(alpha: np.ndarray, log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
  """``D_alpha(P || Q)`` from log-probabilities over the last axis (orders broadcast)."""
  a = np.asarray(alpha)[..., None]
  return special.logsumexp(a * log_p + (1 - a) * log_q, axis=-1) / (a[..., 0] - 1)


def _mixture_points(n: int, b: float, tail: float = 1e-12):
  """Sparse fair-coin counts ``k_i`` covering ``K ~ Bin(n - 1, 1 - 2b)`` and the probability
  of each interval ``[k_i, k_{i+1})``: evenly spaced over the bulk, halving below it down to
  0; ``D`` is non-increasing in ``k``, so ``D(k_i)`` bounds its whole interval."""
  dist = stats.binom(n - 1, 1 - 2 * b)
  lo, hi = int(dist.ppf(tail)), int(dist.isf(tail)) + 1
  step = max(1, (hi - lo) // 24)
  below, k = [], lo // 2
  while k > 0:
    below.append(k)
    k //= 2
  ks = sorted(set([0] + below + list(range(lo, hi, step))))
  edges = ks[1:] + [n]
  mass = np.array([dist.cdf(e - 1) - dist.cdf(k - 1) for k, e in zip(ks, edges)])
  return np.array(ks), np.maximum(mass, 0.0)


def coordinate_rdp(orders, p: np.ndarray, q: np.ndarray, participants: int,
                   b: float) -> np.ndarray:
  """The bound ``eps_1(alpha; p, q)`` of one coordinate (module docstring) for each order and
  each pair ``(p, q)``: ``[orders, pairs]``."""
  orders = np.asarray(orders, np.float64)[:, None]
  p, q = np.atleast_1d(p).astype(np.float64), np.atleast_1d(q).astype(np.float64)
  ks, w = _mixture_points(participants, b)
  terms = []
  for k in ks:
    d = renyi(orders, _log_pair(int(k), p)[None], _log_pair(int(k), q)[None])
    terms.append((orders - 1) * d)
  terms = np.stack(terms)                                        # [k, orders, pairs]
  # The masses sum to 1; normalising removes their rounding, which would otherwise swamp the
  # tiny divergences of close pairs.
  log_w = (np.log(np.maximum(w, 1e-300)) - np.log(np.sum(w)))[:, None, None]
  # Rounding can leave a divergence of ~1e-16 below its true value >= 0: clamp at 0.
  return np.maximum(special.logsumexp(terms + log_w, axis=0) / (orders - 1), 0.0)


@functools.lru_cache(maxsize=256)
def kappa(participants: int, b: float, orders: tuple = ORDERS) -> np.ndarray:
  """``max eps_1(alpha; u, u') / (u - u')^2`` over pairs of normalised coordinates (the grid
  and close pairs around it), per order."""
  u, v = np.meshgrid(GRID, GRID)
  u, v = u[u != v], v[u != v]
  close = np.concatenate([GRID[:-1], GRID[1:]])
  u = np.concatenate([u, close, close])
  v = np.concatenate([v, close + CLOSE, close - CLOSE])
  keep = np.abs(v) <= 1
  u, v = u[keep], v[keep]
  eps = coordinate_rdp(orders, 0.5 + b * u, 0.5 + b * v, participants, b)
  return np.max(eps / (u - v) ** 2, axis=1)


def rdp_per_round(participants: int, b: float, clip_norm: float, coord_clip: float,
                  orders: tuple = ORDERS) -> np.ndarray:
  """RDP of one round at each order: ``4 kappa(alpha) (C / c)^2``."""
  validate(b, clip_norm, coord_clip, participants)
  return 4 * kappa(participants, float(b), orders) * (clip_norm / coord_clip) ** 2


def epsilon(participants: int, b: float, clip_norm: float, coord_clip: float, rounds: int,
            delta: float, orders: tuple = ORDERS) -> float:
  """``epsilon`` at ``delta`` after ``rounds`` rounds (RDP composition, dp-accounting's
  conversion)."""
  return epsilon_of_rounds([participants] * rounds, b, clip_norm, coord_clip, delta, orders)


def epsilon_of_rounds(participants: list[int], b: float, clip_norm: float,
                      coord_clip: float, delta: float, orders: tuple = ORDERS) -> float:
  """``epsilon`` at ``delta`` after rounds that summed ``participants[i]`` clients each (a
  deployment where clients drop out: each round's RDP at the number that took part)."""
  if not participants:
    return 0.0
  rdp = sum(count * rdp_per_round(n, b, clip_norm, coord_clip, orders)
            for n, count in collections.Counter(participants).items())
  eps, _ = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(list(orders), list(rdp),
                                                                  delta)
  return float(eps)


def coordinate_clip(clip_norm: float, d: int, spread: float = 3.0) -> float:
  """``c = spread * C / sqrt(d)``: a rotated coordinate of an update of norm ``C`` is about
  ``C / sqrt(d)``; ``spread`` standard deviations keep clipping (bias) rare."""
  return spread * clip_norm / math.sqrt(d)


def calibrate(target_epsilon: float, delta: float, rounds: int, participants: int,
              clip_norm: float, coord_clip: float, tol: float = 1e-3) -> float:
  """The largest ``b`` in ``(0, 1/4]`` (the least noisy estimate) whose ``rounds`` rounds are
  ``(target_epsilon, delta)``-DP. Raises if even a tiny ``b`` misses the target."""
  if not target_epsilon > 0 or not 0 < delta < 1:
    raise ValueError(f"pbm target needs epsilon > 0 and delta in (0, 1), got "
                     f"({target_epsilon}, {delta})")
  eps = lambda b: epsilon(participants, b, clip_norm, coord_clip, rounds, delta)  # noqa: E731
  if eps(B_MAX) <= target_epsilon:
    return B_MAX
  lo, hi = B_MIN, B_MAX
  if eps(lo) > target_epsilon:
    raise ValueError(f"pbm: {participants} participants per round cannot reach epsilon "
                     f"{target_epsilon} over {rounds} rounds (C / c = "
                     f"{clip_norm / coord_clip:.3g}); sum more clients per round")
  while hi / lo > 1 + tol:
    mid = math.sqrt(lo * hi)
    lo, hi = (mid, hi) if eps(mid) <= target_epsilon else (lo, mid)
  return lo
