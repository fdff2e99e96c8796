"""Differential privacy of the upload (PRISM Algorithm 1, DP branch) and its accountant.

Mechanism (the algorithm as stated, not the official code's clamp of the scores): a client
perturbs its keep-probabilities, ``theta~ = clip(theta + N(0, sigma^2 I), c, 1 - c)``, and
samples the mask it uploads from them, ``M ~ Bernoulli(theta~)``. Clipping and sampling are
post-processing, so the privacy of a round is that of the Gaussian mechanism on ``theta``.

Sensitivity assumption (client-level DP, replace-one): a client's data can move each of the
``d`` keep-probabilities anywhere in ``[0, 1]``, and local training bounds nothing tighter,
so the L2 sensitivity of ``theta`` is ``sqrt(d)`` and the noise multiplier is
``z = sigma / sqrt(d)``. Every round composes one such Gaussian mechanism (no amplification
by client sampling is claimed). Accounting uses Google's ``dp-accounting`` (RDP by default,
PLD on request); ``epsilon`` is a function of ``(z, rounds, delta)`` only, so a resumed run
recomputes it from the round counter.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import dp_accounting
import jax
import jax.numpy as jnp

from prism_jax import masking

ACCOUNTANTS = ("rdp", "pld")
PLD_MIN_MULTIPLIER = 0.1   # below it the PLD discretisation grows without bound


def privatize(key: jax.Array, theta, noise_std: float, clip: float):
  """Gaussian noise on theta, then clip to ``[clip, 1 - clip]``, leaf-wise."""
  return jax.tree.map(
      lambda k, t: jnp.clip(t + noise_std * jax.random.normal(k, t.shape, t.dtype), clip,
                            1.0 - clip), masking.leaf_keys(key, theta), theta)


def official_clamp(scores, clip: float):
  """The official code's DP branch as it runs: the noised ``sigmoid(score)`` is overwritten by
  ``clamp(score, c, 1 - c)`` of the raw scores, which then serve as keep-probabilities. No
  noise reaches the upload: this is not a privacy mechanism (the paper's DP figures come from
  it); it exists to compare with them like for like."""
  return jax.tree.map(lambda s: jnp.clip(s, clip, 1.0 - clip), scores)


def validate(noise_std: float, clip: float) -> None:
  """Rejects impossible mechanism settings before any training starts."""
  if noise_std < 0:
    raise ValueError(f"dp noise_std must be >= 0, got {noise_std}")
  if not 0.0 < clip < 0.5:
    raise ValueError(f"dp clip must lie in (0, 0.5), got {clip}")


def validate_target(epsilon: float, delta: float) -> None:
  """Rejects impossible privacy targets."""
  if not epsilon > 0:
    raise ValueError(f"dp epsilon must be > 0, got {epsilon}")
  if not 0.0 < delta < 1.0:
    raise ValueError(f"dp delta must lie in (0, 1), got {delta}")


def noise_multiplier(noise_std: float, num_weights: int,
                     sensitivity: float | None = None) -> float:
  """``z = sigma / sensitivity``; the default sensitivity is ``sqrt(num_weights)``."""
  return noise_std / (math.sqrt(num_weights) if sensitivity is None else sensitivity)


def dp_event(z: float, rounds: int) -> dp_accounting.DpEvent:
  """``rounds`` compositions of the Gaussian mechanism with noise multiplier ``z``."""
  return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)


def _accountant(kind: str) -> dp_accounting.PrivacyAccountant:
  if kind == "rdp":
    return dp_accounting.rdp.RdpAccountant()
  if kind == "pld":
    return dp_accounting.pld.PLDAccountant()
  raise ValueError(f"unknown accountant {kind!r}; choose one of {ACCOUNTANTS}")


@functools.lru_cache(maxsize=4096)
def epsilon_for_multiplier(z: float, rounds: int, delta: float, accountant: str = "rdp") -> float:
  """Epsilon after ``rounds`` Gaussian releases with noise multiplier ``z`` at ``delta``."""
  if rounds == 0:
    return 0.0
  if z <= 0:
    return math.inf
  if accountant == "pld" and z < PLD_MIN_MULTIPLIER:
    raise ValueError(f"PLD accounting of noise multiplier {z:.3g} < {PLD_MIN_MULTIPLIER} needs "
                     "unbounded memory; use the 'rdp' accountant")
  acc = _accountant(accountant)
  acc.compose(dp_event(z, rounds))
  return float(acc.get_epsilon(delta))


def epsilon(noise_std: float, num_weights: int, rounds: int, delta: float,
            sensitivity: float | None = None, accountant: str = "rdp") -> float:
  """Privacy spent, ``(epsilon, delta)``-DP, after ``rounds`` rounds of the mechanism."""
  validate_target(1.0, delta)
  return epsilon_for_multiplier(noise_multiplier(noise_std, num_weights, sensitivity), rounds,
                                delta, accountant)


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """The clients' Gaussian noise on theta as the accountant sees it: noise std, the number
  of weights it covers, the L2 sensitivity (None: ``sqrt(num_weights)``) and the
  accountant (``"rdp"`` or ``"pld"``)."""
  noise_std: float
  num_weights: int
  sensitivity: float | None = None
  accountant: str = "rdp"

  def epsilon(self, participants: list[int], delta: float) -> float:
    """``epsilon`` after ``len(participants)`` rounds: local noise protects each client
    alone, so the count of the others does not enter (worst case: in every round)."""
    return epsilon(self.noise_std, self.num_weights, len(participants), delta,
                   self.sensitivity, self.accountant)

  def describe(self) -> str:
    z = noise_multiplier(self.noise_std, self.num_weights, self.sensitivity)
    return f"noise std {self.noise_std:.4g} on theta (multiplier {z:.4g}, {self.accountant})"


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, num_weights: int,
                    sensitivity: float | None = None, accountant: str = "rdp") -> float:
  """The smallest noise std ``sigma`` whose ``rounds`` releases are (epsilon, delta)-DP."""
  validate_target(target_epsilon, delta)
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  z = dp_accounting.calibrate_dp_mechanism(
      lambda: _accountant(accountant), lambda z: dp_event(z, rounds), target_epsilon, delta,
      dp_accounting.LowerEndpointAndGuess(PLD_MIN_MULTIPLIER if accountant == "pld" else 1e-3,
                                          1.0), tol=1e-4)
  return float(z) * (math.sqrt(num_weights) if sensitivity is None else sensitivity)


def paper_noise_std(epsilon: float, delta: float, clip: float, num_weights: int) -> float:
  """The official code's per-layer noise std, ``sqrt(sqrt(2 ln(1.25/delta)/eps) * S)`` with
  ``S = (1 - 2c) sqrt(n)``: what "epsilon = 9.8" means there (not an accountant)."""
  return math.sqrt(math.sqrt(2 * math.log(1.25 / delta) / epsilon)
                   * (1 - 2 * clip) * math.sqrt(num_weights))
