"""Differential privacy of the uploaded mask (PRISM Algorithm 1, DP branch).

The client perturbs its keep-probabilities before sampling the mask it uploads:
``theta~ = clip(theta + N(0, sigma^2 I), c, 1 - c)``, then ``M ~ Bernoulli(theta~)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prism_jax import masking


def privatize(key: jax.Array, theta, noise_std: float, clip: float):
  """Gaussian noise on theta, then clip to ``[clip, 1 - clip]``, leaf-wise."""
  return jax.tree.map(
      lambda k, t: jnp.clip(t + noise_std * jax.random.normal(k, t.shape, t.dtype), clip,
                            1.0 - clip), masking.leaf_keys(key, theta), theta)


def validate(noise_std: float, clip: float) -> None:
  """Rejects impossible DP settings before any training starts."""
  if noise_std < 0:
    raise ValueError(f"dp noise_std must be >= 0, got {noise_std}")
  if not 0.0 < clip < 0.5:
    raise ValueError(f"dp clip must lie in (0, 0.5), got {clip}")
