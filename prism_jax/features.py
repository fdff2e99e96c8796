"""Feature extractors ``psi`` and each client's real-feature statistics.

An :class:`Extractor` is a pure ``apply(params, images [B, H, W, C] in [-1, 1]) -> [B, D]``
plus its frozen ``params``, which travel as jit arguments (never baked into the compiled
round as constants). The paper uses a frozen ImageNet VGG19 (:mod:`prism_jax.vgg`);
offline, ``pixels`` (identity) is the default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import cache, classifiers, data, generator, vgg
from prism_jax.data import to_float


def pixels(images: jax.Array) -> jax.Array:
  """Identity extractor: flattened pixels."""
  return images.reshape(images.shape[0], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class Extractor:
  name: str
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any = ()
  # Features depend on the whole batch (batch-statistics BN, the official VGG19): real
  # statistics are then computed over shuffled batches of the local batch size, and
  # ``apply(params, images, valid=rows)`` takes the rows of a padded batch to normalise over.
  batch_dependent: bool = False
  # Applied to generated images only, before ``apply`` (the official code rescales colour
  # fakes to the ImageNet-normalised range but feeds real images as they are); None: none.
  prepare_fake: Callable[[jax.Array], jax.Array] | None = None

  def apply_fake(self, params, images: jax.Array) -> jax.Array:
    """Features of generated images (:attr:`prepare_fake` first)."""
    return self.apply(params, images if self.prepare_fake is None else
                      self.prepare_fake(images))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.apply(self.params, images)

  def dim(self, image_shape) -> int:
    """Feature dimension for images of shape ``(H, W, C)``."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return int(jax.eval_shape(self.apply, self.params, x).shape[1])

  def fingerprint(self) -> str:
    return fingerprint(self.name, self.params)


def fingerprint(name: str, params) -> str:
  """Identifies a network by name and weights (for cache keys)."""
  h = hashlib.sha1(name.encode())
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return f"{name}-{h.hexdigest()[:12]}"


def _pixels_apply(params, images):
  del params
  return pixels(images)


def vgg19(weights: str | None = None, num_layers: int = vgg.NUM_CONV,
          batch_norm: bool | None = None, width: float = 1.0, seed: int = 0,
          image_size: int = 32, official: bool = False, layers: str = "first",
          fake_range: str = "same", matmul_dtype: str | None = None) -> Extractor:
  """VGG19 features from a torchvision weights file (``.npz``, see :mod:`prism_jax.vgg`).

  ``num_layers`` ReLU maps, the first ones in forward order (``layers="first"``, the
  official ``numLayersToFtrMatching``) or the last ones; the same at 16, all of them.
  ``fake_range="imagenet"``: colour fakes are rescaled from [-1, 1] to the ImageNet-normalised
  range before the network and real images are not, as the official client's
  ``preprocess_fakeData`` does (grey images are only repeated to RGB); ``"same"``: both alike.

  ``matmul_dtype="bfloat16"``: its convolutions' matmuls on bf16 inputs with float32 sums.

  ``official``: run it as the official code does (``vgg19_bn`` with batch-statistics BN,
  raw [-1, 1] inputs; :mod:`prism_jax.vgg`). ``weights="random"`` uses random weights from
  ``seed``: only to smoke-test the pipeline.
  """
  if weights is None:
    raise ValueError("features 'vgg19' needs weights: a torchvision VGG19 .npz file "
                     "(see prism_jax/vgg.py) or 'random' for a smoke test")
  if weights == "random":
    batch_norm = official if batch_norm is None else bool(batch_norm)
    params = vgg.init_params(jax.random.key(seed), batch_norm, width, image_size)
  else:
    if not os.path.exists(weights):
      raise FileNotFoundError(f"VGG19 weights file {weights} does not exist")
    params = vgg.load_params(weights, batch_norm, width)
    batch_norm = any(k.startswith("bn") for k in params)
  if official and not batch_norm:
    raise ValueError("official VGG19 features are vgg19_bn's: give a vgg19_bn weights file "
                     "(or batch_norm=True with weights='random')")
  if fake_range not in ("same", "imagenet"):
    raise ValueError(f"fake_range must be 'same' or 'imagenet', got {fake_range!r}")
  apply = vgg.make_extractor(num_layers, batch_norm, width, official, layers, matmul_dtype)
  which = "" if num_layers == vgg.NUM_CONV or layers == "first" else "last"
  name = (f"vgg19{'_bn' if batch_norm else ''}{'-official' if official else ''}"
          f"-L{num_layers}{which}")
  prepare = vgg.imagenet_range if fake_range == "imagenet" else None
  name += "-bf16" if matmul_dtype else ""
  return Extractor(name + ("-fakes_imagenet" if prepare else ""), apply, params,
                   batch_dependent=official, prepare_fake=prepare)


class FeatureCNN(nn.Module):
  """conv16 -> pool -> conv32 -> pool -> conv64 -> mean -> dense: a small classifier whose
  three ReLU maps (28,672 features at 32x32) serve as ``psi``. Deliberately unlike the
  evaluation's domain classifier (:class:`prism_jax.embedders.DomainCNN`: other widths,
  depth and head, other seed, other data), so that evaluation does not judge the generator
  by the features it was trained on."""
  num_classes: int = 10
  conv_impl: str | None = None

  @nn.compact
  def __call__(self, x):
    impl = self.conv_impl or generator.conv_auto_impl()
    maps = []
    for i, c in enumerate((16, 32, 64)):
      if i:
        x = vgg.max_pool2x2(x)
      kernel = self.param(f"conv{i}", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], c))
      bias = self.param(f"conv{i}_bias", nn.initializers.zeros, (c,))
      x = jax.nn.relu(generator.conv2d(x, kernel, impl) + bias)
      maps.append(x)
    return maps, nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def cnn(dataset: str = "mnist_offline", image_size: int = 32, cache_dir: str | None = None,
        data_dir: str | None = None, epochs: int = 2, seed: int = 1) -> Extractor:
  """Offline features: :class:`FeatureCNN` trained (once, cached in ``cache_dir``) on the
  second half of the dataset's held-out split, which no client owns. The paper's VGG19 needs
  a weights file and an accelerator; this is the CPU-scale substitute."""
  splits = data.load(dataset, image_size, data_dir)
  valid = splits["valid"]
  half = len(valid.labels) // 2
  model = FeatureCNN(data.info(dataset).num_classes)
  path = (None if cache_dir is None else
          os.path.join(cache_dir, f"feature-cnn-{dataset}-{image_size}-e{epochs}-s{seed}.npz"))
  params = classifiers.cached_classifier(model, valid.images[half:], valid.labels[half:],
                                         path, seed, epochs)

  def apply(params, images):
    maps, _ = model.apply({"params": params}, images)
    return jnp.concatenate([m.reshape(m.shape[0], -1) for m in maps], axis=1)
  return Extractor(f"cnn-{dataset}", apply, params)


EXTRACTORS = {"pixels": lambda: Extractor("pixels", _pixels_apply),
              "vgg19": vgg19, "cnn": cnn}


def get_extractor(name: str, **kwargs) -> Extractor:
  if name not in EXTRACTORS:
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
  return EXTRACTORS[name](**kwargs)


def client_stats(extractor: Extractor, images: np.ndarray, counts: np.ndarray,
                 batch_size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Each client's real-feature mean and unbiased variance over all its local data.

  ``images`` is the padded uint8 ``[K, N_max, H, W, C]`` array; returns float32
  ``[K, D]`` arrays. Each batch's feature sum and centred sum of squares are taken on the
  device, and only those two ``[D]`` vectors go to the host, where the batches are combined
  in float64 (Chan et al.'s pairwise update: no cancellation, unlike the official code's
  one-pass sum of squares, which it equals up to rounding). For a ``batch_dependent``
  extractor the batches are the client's data in a shuffled order (``seed``), as the
  official code's shuffling loader feeds them, the last one possibly smaller: it is padded
  and its statistics taken over its real rows (``valid``), so every batch of every client
  runs one compiled program (the result is cached by :func:`cached_client_stats`). Other
  extractors get zero-padded fixed-size batches as well.
  """

  @jax.jit
  def batch_moments(params, x, n_valid):
    """Sum and centred sum of squares of the first ``n_valid`` rows' features."""
    rows = jnp.arange(x.shape[0]) < n_valid
    if extractor.batch_dependent:
      f = extractor.apply(params, to_float(x), valid=rows)
    else:
      f = extractor.apply(params, to_float(x))
    f = f.reshape(f.shape[0], -1)
    valid = rows[:, None]
    total = jnp.where(valid, f, 0).sum(0)
    return total, jnp.where(valid, jnp.square(f - total / n_valid), 0).sum(0)

  rng = np.random.default_rng(seed)
  means, variances = [], []
  for k, n in enumerate(np.asarray(counts)):
    n = int(n)
    order = rng.permutation(n) if extractor.batch_dependent else None
    sums, m2s, sizes = [], [], []
    for i in range(0, n, batch_size):
      size = min(batch_size, n - i)
      # padded to one shape (one compilation); padding rows ignored, also by batch norms
      x = images[k, i:i + batch_size] if order is None else images[
          k, np.sort(order[i:i + batch_size])]
      x = np.concatenate([x, np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)])
      s_b, m2_b = batch_moments(extractor.params, x, np.int32(size))
      sums.append(s_b), m2s.append(m2_b), sizes.append(size)
    sums, m2s = (np.asarray(jnp.stack(a), np.float64) for a in (sums, m2s))
    sizes = np.asarray(sizes, np.float64)[:, None]
    mean = sums.sum(0) / n
    m2 = m2s.sum(0) + (sizes * np.square(sums / sizes - mean)).sum(0)
    means.append(mean)
    variances.append(m2 / max(n - 1, 1))
  return np.stack(means).astype(np.float32), np.stack(variances).astype(np.float32)


def cached_client_stats(extractor: Extractor, images: np.ndarray, counts: np.ndarray,
                        cache_dir: str | None, key: str, batch_size: int = 256
                        ) -> tuple[np.ndarray, np.ndarray]:
  """:func:`client_stats`, cached in ``cache_dir`` under ``key`` + the extractor's fingerprint
  (computed once per dataset / split / client; a corrupt cache file is recomputed).
  ``batch_size`` matters only for a ``batch_dependent`` extractor (then in the key)."""
  if extractor.batch_dependent:
    key = f"{key}-b{batch_size}"
  path = (None if cache_dir is None else
          os.path.join(cache_dir, f"real_stats-{key}-{extractor.fingerprint()}.npz"))
  out = cache.arrays(path, lambda: dict(zip(("mean", "var"),
                                            client_stats(extractor, images, counts,
                                                         batch_size))),
                     lambda a: a["mean"].shape[0] == len(counts))
  return out["mean"], out["var"]
