"""Client partitions (which samples each client owns) and their padded device layout.

Splits, deterministic in ``seed`` (paper, "Data splits"):
  * :func:`iid`       -- a random share per client: equal, or of unequal sizes with
    log-normal(0, ``unbalance``) proportions (``unbalance=0``: equal);
  * :func:`shards`    -- sort by label, cut into ``divide * num_clients`` single-label
    shards, give each client ``divide`` random shards (pathological non-IID, ``divide = 4``);
  * :func:`dirichlet` -- per class, proportions across clients ~ Dir(alpha).
Each returns a list of index arrays; :func:`to_client_data` pads them into the
``[K, N_max, H, W, C]`` array plus counts that the round step consumes.
"""
from __future__ import annotations

import numpy as np

from prism_jax.data import ClientData


def _check(num_samples: int, num_clients: int) -> None:
  if num_clients < 1:
    raise ValueError(f"num_clients must be >= 1, got {num_clients}")
  if num_clients > num_samples:
    raise ValueError(f"{num_clients} clients but only {num_samples} samples: every client "
                     "needs at least one")


def iid(labels: np.ndarray, num_clients: int, seed: int = 0,
        unbalance: float = 0.0) -> list[np.ndarray]:
  """Random shares; client ``k`` gets a fraction ~ LogNormal(0, unbalance) (normalised)."""
  _check(len(labels), num_clients)
  if unbalance < 0:
    raise ValueError(f"unbalance must be >= 0, got {unbalance}")
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(labels))
  if unbalance == 0:
    return [np.sort(p) for p in np.array_split(perm, num_clients)]
  share = rng.lognormal(0.0, unbalance, num_clients)
  extra = np.floor(share / share.sum() * (len(labels) - num_clients)).astype(int)
  sizes = 1 + extra
  sizes[np.argmax(share)] += len(labels) - sizes.sum()    # rounding remainder
  return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def shards(labels: np.ndarray, num_clients: int, divide: int = 4,
           seed: int = 0) -> list[np.ndarray]:
  """Label-sorted shards, ``divide`` random ones per client (pathological non-IID).

  Shards never straddle a label: each class is cut into a number of shards proportional to
  its size (at least one), so a client holds at most ``divide`` labels. Only when there
  are fewer shards than classes are shards cut from the label-sorted order across classes.
  """
  if divide < 1:
    raise ValueError(f"divide must be >= 1, got {divide}")
  num_shards = divide * num_clients
  _check(len(labels), num_clients)
  if num_shards > len(labels):
    raise ValueError(f"{num_shards} shards (divide={divide} x {num_clients} clients) but only "
                     f"{len(labels)} samples; lower divide or the number of clients")
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind="stable")
  classes, sizes = np.unique(labels, return_counts=True)
  if num_shards < len(classes) or np.any(sizes < 1):
    pieces = np.array_split(order, num_shards)
  else:   # largest-remainder allocation of shards to classes, >= 1 each
    quota = 1 + (num_shards - len(classes)) * sizes / sizes.sum()
    per_class = np.floor(quota).astype(int)
    per_class[np.argsort(per_class - quota)[:num_shards - per_class.sum()]] += 1
    if np.any(per_class > sizes):
      raise ValueError(f"{num_shards} shards (divide={divide} x {num_clients} clients) do not "
                       f"fit classes with {sizes.min()} samples; lower divide or clients")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pieces = [p for c, n in enumerate(per_class)
              for p in np.array_split(order[starts[c]:starts[c] + sizes[c]], n)]
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


SPLITS = ("iid", "shards", "dirichlet")


def partition(labels: np.ndarray, num_clients: int, split: str, seed: int = 0,
              divide: int = 4, alpha: float = 0.5, min_size: int = 1,
              unbalance: float = 0.0) -> list[np.ndarray]:
  """Partition by name: ``"iid"``, ``"shards"`` or ``"dirichlet"``."""
  if split == "iid":
    return iid(labels, num_clients, seed, unbalance)
  if split == "shards":
    return shards(labels, num_clients, divide, seed)
  if split == "dirichlet":
    return dirichlet(labels, num_clients, alpha, seed, min_size)
  raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def to_client_data(images: np.ndarray, parts: list[np.ndarray],
                   n_max: int | None = None) -> ClientData:
  """Pads each client's images to the largest client (or ``n_max``, the largest of all when
  ``parts`` is one host's share): ``[K, N_max, ...]`` plus counts."""
  counts = np.array([len(p) for p in parts], np.int32)
  out = np.zeros((len(parts), n_max or counts.max()) + images.shape[1:], images.dtype)
  for k, p in enumerate(parts):
    out[k, :len(p)] = images[p]
  return ClientData(out, counts)


def label_histogram(labels: np.ndarray, parts: list[np.ndarray],
                    num_classes: int | None = None) -> np.ndarray:
  """``[K, num_classes]`` counts of each label per client."""
  num_classes = num_classes or int(labels.max()) + 1
  return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def summary(labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None) -> dict:
  """Per-client counts, label histogram and skew (largest label share) as JSON-ready lists."""
  hist = label_histogram(labels, parts, num_classes)
  counts = hist.sum(1)
  return {"counts": counts.tolist(), "label_histogram": hist.tolist(),
          "labels_per_client": (hist > 0).sum(1).tolist(),
          "max_label_share": np.round(hist.max(1) / np.maximum(counts, 1), 4).tolist()}


def format_summary(s: dict) -> str:
  """A small text table: one row per client with its count and label histogram."""
  num_classes = len(s["label_histogram"][0])
  head = f"{'client':>6} {'n':>7} | " + " ".join(f"{c:>5}" for c in range(num_classes))
  rows = [f"{k:>6} {n:>7} | " + " ".join(f"{v:>5}" for v in h)
          for k, (n, h) in enumerate(zip(s["counts"], s["label_histogram"]))]
  return "\n".join([head, "-" * len(head)] + rows)
