"""Client partitions (which samples each client owns) and their padded device layout.

Splits, deterministic in ``seed`` (paper, "Data splits"):
  * :func:`iid`       -- an equal random share per client;
  * :func:`shards`    -- sort by label, cut into ``divide * num_clients`` shards, give each
    client ``divide`` random shards (pathological non-IID, ``divide = 4`` by default);
  * :func:`dirichlet` -- per class, proportions across clients ~ Dir(alpha).
Each returns a list of index arrays; :func:`to_client_data` pads them into the
``[K, N_max, H, W, C]`` array plus counts that the round step consumes.
"""
from __future__ import annotations

import numpy as np

from prism_jax.round import ClientData


def _check(num_samples: int, num_clients: int) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if num_clients > num_samples:
    raise ValueError(f"{num_clients} clients but only {num_samples} samples: every client "
                     "needs at least one")


def iid(labels: np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
  _check(len(labels), num_clients)
  perm = np.random.default_rng(seed).permutation(len(labels))
  return [np.sort(p) for p in np.array_split(perm, num_clients)]


def shards(labels: np.ndarray, num_clients: int, divide: int = 4,
           seed: int = 0) -> list[np.ndarray]:
  num_shards = divide * num_clients
  _check(len(labels), num_shards)
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind="stable")
  pieces = np.array_split(order, num_shards)
  owner = rng.permutation(num_shards).reshape(num_clients, divide)
  return [np.sort(np.concatenate([pieces[s] for s in row])) for row in owner]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0,
              min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
  """Dirichlet(alpha) label skew; redraws until every client holds ``min_size`` samples."""
  _check(len(labels), num_clients)
  if alpha <= 0:
    raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
  rng = np.random.default_rng(seed)
  for _ in range(max_tries):
    parts = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
      idx = rng.permutation(np.flatnonzero(labels == c))
      cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)
      for k, piece in enumerate(np.split(idx, cuts[:-1])):
        parts[k].append(piece)
    parts = [np.sort(np.concatenate(p)) for p in parts]
    sizes = [len(p) for p in parts]
    if min(sizes) >= min_size:
      return parts
  empty = [k for k, n in enumerate(sizes) if n < min_size]
  raise ValueError(
      f"dirichlet(alpha={alpha}) left clients {empty} with fewer than min_size={min_size} "
      f"samples in {max_tries} draws; raise alpha, lower min_size or use fewer clients")


def partition(labels: np.ndarray, num_clients: int, split: str, seed: int = 0,
              divide: int = 4, alpha: float = 0.5, min_size: int = 1) -> list[np.ndarray]:
  """Partition by name: ``"iid"``, ``"shards"`` or ``"dirichlet"``."""
  if split == "iid":
    return iid(labels, num_clients, seed)
  if split == "shards":
    return shards(labels, num_clients, divide, seed)
  if split == "dirichlet":
    return dirichlet(labels, num_clients, alpha, seed, min_size)
  raise ValueError(f"unknown split {split!r}; choose one of ['dirichlet', 'iid', 'shards']")


def to_client_data(images: np.ndarray, parts: list[np.ndarray]) -> ClientData:
  """Pads each client's images to the largest client: ``[K, N_max, ...]`` plus counts."""
  counts = np.array([len(p) for p in parts], np.int32)
  out = np.zeros((len(parts), counts.max()) + images.shape[1:], images.dtype)
  for k, p in enumerate(parts):
    out[k, :len(p)] = images[p]
  return ClientData(out, counts)


def label_histogram(labels: np.ndarray, parts: list[np.ndarray],
                    num_classes: int | None = None) -> np.ndarray:
  """``[K, num_classes]`` counts of each label per client."""
  num_classes = num_classes or int(labels.max()) + 1
  return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
