"""Small datasets written in tfds's own on-disk format, for tests, benchmarks and smoke runs.

Nothing can be downloaded on an offline machine, but ``tfds.load`` (the real loading path of
:mod:`prism_jax.data`) reads any prepared dataset. :func:`write` prepares ``name`` with the
builder's real features, version and splits, and examples whose images are either constant
per label (``10 + 24 * label``; CelebA: only the central 160x160 crop, black border, so that
tests can check crop, resize and scaling exactly) or uniform noise. Needs TensorFlow.
"""
from __future__ import annotations

import numpy as np

from prism_jax import data


def _example(feature, label, fill_image):
  """One example for a tfds feature spec: images from ``fill_image(shape)``, the label
  (CelebA: the attribute the splits use), zeros / "x" elsewhere."""
  import tensorflow_datasets as tfds
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: (label if k in ("label", data.CELEBA_LABEL) else
                _example(f, label, fill_image)) for k, f in feature.items()}
  if isinstance(feature, tfds.features.Image):
    return fill_image(feature.shape)
  if isinstance(feature, tfds.features.Text):
    return "x"
  return np.zeros(feature.shape, feature.np_dtype)


def constant_image(shape, value: int) -> np.ndarray:
  """``value`` everywhere, or only on the central CelebA crop when the image is larger."""
  h, w, c = shape
  image = np.zeros((h, w, c), np.uint8)
  if min(h, w) > data.CELEBA_CROP:
    top, left = (h - data.CELEBA_CROP) // 2, (w - data.CELEBA_CROP) // 2
    image[top:top + data.CELEBA_CROP, left:left + data.CELEBA_CROP] = value
  else:
    image[:] = value
  return image


def write(name: str, data_dir: str, sizes: dict[str, int], content: str = "constant",
          seed: int = 0) -> None:
  """Prepares tfds dataset ``name`` in ``data_dir`` with ``sizes[split]`` examples each
  (``content``: "constant" per label, or "noise")."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  if content not in ("constant", "noise"):
    raise ValueError(f"content must be 'constant' or 'noise', got {content!r}")
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  rng = np.random.default_rng(seed)

  def examples(n):
    for y in rng.integers(0, data.info(name).num_classes, n):
      label = bool(y) if name == "celeb_a" else int(y)
      if content == "constant":
        fill = lambda shape, v=10 + 24 * int(y): constant_image(shape, v)   # noqa: E731
      else:
        fill = lambda shape: rng.integers(0, 256, shape).astype(np.uint8)   # noqa: E731
      yield _example(features, label, fill)

  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(builder.info.version), features=features,
      split_datasets={s: tf.data.Dataset.from_generator(
          lambda n=n: examples(n), output_signature=features.get_tensor_spec())
          for s, n in sizes.items()}, data_dir=data_dir)
