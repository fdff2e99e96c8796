"""Embedders for evaluation: ``apply(params, images in [-1, 1]) -> (embeddings, logits)``.

* ``domain`` -- a small CNN classifier trained on the held-out split (``valid``: no client
  owns it), cached per dataset / image size / seed. Its penultimate layer embeds; metrics on
  it are reported as ``domain_fid`` etc., never as Inception FID.
* ``inception`` -- InceptionV3 (pool3 features, 2048-d) from a weights file
  (:mod:`prism_jax.inception`); its FID is the paper's "FID".
* ``legibility_judges`` -- two more classifiers of other architectures and seeds, trained
  on the held-out split with blurred copies, for :func:`prism_jax.metrics.legibility`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prism_jax.classifiers import apply_classifier as _apply, cached_classifier
from prism_jax.classifiers import train_classifier  # noqa: F401  (re-exported)
from prism_jax.data import to_float


@dataclasses.dataclass(frozen=True, eq=False)
class Embedder:
  name: str                       # metric prefix: "domain" -> "domain_fid"
  apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array | None]]
  params: Any
  info: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def _jitted(self):
    return jax.jit(lambda p, x: self.apply(p, to_float(x)))

  def embed(self, images, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and logits) of float images in [-1, 1] or uint8 images, batched."""
    fn = self._jitted
    embs, logits = [], []
    for i in range(0, len(images), batch_size):
      e, l = fn(self.params, jnp.asarray(images[i:i + batch_size]))
      embs.append(np.asarray(e))
      logits.append(None if l is None else np.asarray(l))
    return np.concatenate(embs), (None if logits[0] is None else np.concatenate(logits))


class DomainCNN(nn.Module):
  """conv32 -> pool -> conv64 -> pool -> conv128 -> global mean -> dense 128 -> classes."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for c in (32, 64):
      x = nn.relu(nn.Conv(c, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(128, (3, 3))(x))
    emb = nn.relu(nn.Dense(128)(jnp.mean(x, axis=(1, 2))))
    return emb, nn.Dense(self.num_classes)(emb)


def train_domain_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int,
                            seed: int = 0, epochs: int = 3, batch_size: int = 128):
  """Trains :class:`DomainCNN` on uint8 images; returns its params."""
  return train_classifier(DomainCNN(num_classes), images, labels, seed, epochs, batch_size)


def accuracy(embedder: Embedder, images, labels) -> float:
  _, logits = embedder.embed(images)
  return float(np.mean(np.argmax(logits, 1) == labels))


def domain(held_out_images: np.ndarray, held_out_labels: np.ndarray, num_classes: int,
           cache_path: str | None = None, seed: int = 0, epochs: int = 3) -> Embedder:
  """The offline domain embedder, trained once on the held-out split and cached."""
  model = DomainCNN(num_classes)
  params = cached_classifier(model, held_out_images, held_out_labels, cache_path, seed, epochs)
  return Embedder("domain", functools.partial(_apply, model), params)


class JudgeMLP(nn.Module):
  """pixels -> dense 512 -> dense 256 -> classes: a judge that shares no convolution with
  :class:`DomainCNN`."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(512)(x.reshape(x.shape[0], -1)))
    emb = nn.relu(nn.Dense(256)(h))
    return emb, nn.Dense(self.num_classes)(emb)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of uint8 images ``[N, H, W, C]`` (kernel radius ceil(3 sigma),
  edges repeated); ``sigma`` 0 returns them unchanged."""
  if sigma <= 0:
    return images
  r = int(np.ceil(3 * sigma))
  w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  w /= w.sum()
  x = images.astype(np.float32)
  for axis in (1, 2):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    x = sum(wi * np.take(xp, np.arange(i, i + n), axis=axis) for i, wi in enumerate(w))
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


JUDGE_BLURS = (0.0, 1.0, 1.75)


def legibility_judges(held_out_images: np.ndarray, held_out_labels: np.ndarray,
                      num_classes: int, cache_dir: str | None = None, dataset: str = "",
                      epochs: int = 4) -> tuple[Embedder, Embedder]:
  """Two classifiers for :func:`prism_jax.metrics.legibility`: a :class:`DomainCNN` (seed
  1) and a :class:`JudgeMLP` (seed 2), trained once (cached) on the held-out split with
  every image also blurred by each sigma of :data:`JUDGE_BLURS` px. They read soft
  strokes as well as crisp ones, unlike the domain embedder, so what they refuse is a
  broken or ambiguous shape, not a soft edge. ``dataset`` names the cache files."""
  @functools.cache     # blurred only on a cache miss, once for both judges
  def blurred():
    return (np.concatenate([gaussian_blur(held_out_images, s) for s in JUDGE_BLURS]),
            np.tile(held_out_labels, len(JUDGE_BLURS)))

  judges = []
  for name, model, seed in (("judge_cnn", DomainCNN(num_classes), 1),
                            ("judge_mlp", JudgeMLP(num_classes), 2)):
    path = None if cache_dir is None else os.path.join(
        cache_dir, f"{name}-{dataset}-{len(held_out_labels)}-{held_out_images.shape[1]}-"
        f"e{epochs}.npz")
    params = cached_classifier(model, held_out_images, held_out_labels, path, seed, epochs,
                               augment=lambda *_: blurred())
    judges.append(Embedder(name, functools.partial(_apply, model), params))
  return judges[0], judges[1]


def inception(weights: str) -> Embedder:
  """InceptionV3 pool3 embeddings and logits from a weights file."""
  from prism_jax import inception as inc
  params = inc.load_params(weights)
  return Embedder("inception", inc.apply, params)
