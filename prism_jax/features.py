"""Feature extractors ``psi``: pure functions ``images [B, H, W, C] in [-1, 1] -> [B, D]``.

The loss compares ``psi(real)`` with ``psi(fake)``. The paper uses a frozen ImageNet VGG19;
offline, :func:`pixels` (identity on pixels) is the default.
"""
from __future__ import annotations

from typing import Callable

import jax

Extractor = Callable[[jax.Array], jax.Array]


def pixels(images: jax.Array) -> jax.Array:
  """Identity extractor: flattened pixels."""
  return images.reshape(images.shape[0], -1)


EXTRACTORS = {"pixels": pixels}


def get_extractor(name: str) -> Extractor:
  if name not in EXTRACTORS:
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
  return EXTRACTORS[name]
