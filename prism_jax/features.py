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

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import cache, vgg


def pixels(images: jax.Array) -> jax.Array:
  """Identity extractor: flattened pixels."""
  return images.reshape(images.shape[0], -1)


@dataclasses.dataclass(frozen=True, eq=False)
class Extractor:
  name: str
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any = ()

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
          image_size: int = 32) -> Extractor:
  """VGG19 features from a torchvision weights file (``.npz``, see :mod:`prism_jax.vgg`).

  ``weights="random"`` uses random weights from ``seed``: only to smoke-test the pipeline.
  """
  if weights is None:
    raise ValueError("features 'vgg19' needs weights: a torchvision VGG19 .npz file "
                     "(see prism_jax/vgg.py) or 'random' for a smoke test")
  if weights == "random":
    batch_norm = bool(batch_norm)
    params = vgg.init_params(jax.random.key(seed), batch_norm, width, image_size)
  else:
    if not os.path.exists(weights):
      raise FileNotFoundError(f"VGG19 weights file {weights} does not exist")
    params = vgg.load_params(weights, batch_norm, width)
    batch_norm = any(k.startswith("bn") for k in params)
  apply = vgg.make_extractor(num_layers, batch_norm, width)
  return Extractor(f"vgg19{'_bn' if batch_norm else ''}-L{num_layers}", apply, params)


EXTRACTORS = {"pixels": lambda: Extractor("pixels", _pixels_apply),
              "vgg19": vgg19}


def get_extractor(name: str, **kwargs) -> Extractor:
  if name not in EXTRACTORS:
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
  return EXTRACTORS[name](**kwargs)


def client_stats(extractor: Extractor, images: np.ndarray, counts: np.ndarray,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Each client's real-feature mean and unbiased variance over all its local data.

  ``images`` is the padded uint8 ``[K, N_max, H, W, C]`` array; returns float32
  ``[K, D]`` arrays. Sums are accumulated in float64 on the host.
  """
  from prism_jax.client import to_float
  apply = jax.jit(lambda p, x: extractor.apply(p, to_float(x)))
  means, variances = [], []
  for k, n in enumerate(np.asarray(counts)):
    total = total_sq = 0.0
    for i in range(0, int(n), batch_size):
      f = np.asarray(apply(extractor.params, images[k, i:min(i + batch_size, n)]), np.float64)
      total = total + f.sum(0)
      total_sq = total_sq + np.square(f).sum(0)
    mean = total / n
    means.append(mean)
    variances.append((total_sq - n * mean ** 2) / max(n - 1, 1))
  return np.stack(means).astype(np.float32), np.maximum(np.stack(variances), 0).astype(np.float32)


def cached_client_stats(extractor: Extractor, images: np.ndarray, counts: np.ndarray,
                        cache_dir: str | None, key: str) -> tuple[np.ndarray, np.ndarray]:
  """:func:`client_stats`, cached in ``cache_dir`` under ``key`` + the extractor's fingerprint
  (computed once per dataset / split / client; a corrupt cache file is recomputed)."""
  path = (None if cache_dir is None else
          os.path.join(cache_dir, f"real_stats-{key}-{extractor.fingerprint()}.npz"))
  out = cache.arrays(path, lambda: dict(zip(("mean", "var"),
                                            client_stats(extractor, images, counts))),
                     lambda a: a["mean"].shape[0] == len(counts))
  return out["mean"], out["var"]
