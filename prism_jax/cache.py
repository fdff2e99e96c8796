"""On-disk caches of arrays (real-feature statistics, evaluators, real embeddings)."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

Arrays = dict[str, np.ndarray]


def arrays(path: str | None, compute: Callable[[], Arrays],
           valid: Callable[[Arrays], bool] = lambda a: True) -> Arrays:
  """The arrays cached in ``path`` (``.npz``) if it is readable and ``valid``, else
  ``compute()``, written atomically (a crash never leaves a half-written cache).
  ``path=None`` disables caching."""
  if path and os.path.exists(path):
    try:
      with np.load(path) as f:
        out = {k: f[k] for k in f.files}
      if valid(out):
        return out
    except (OSError, ValueError, KeyError):   # corrupt cache: recompute
      pass
  out = compute()
  if path:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
  return out
