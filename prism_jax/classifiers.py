"""Classifiers trained once on a dataset's held-out split and cached: the evaluation's
domain embedder and legibility judges (:mod:`prism_jax.embedders`) and the ``cnn`` feature
extractor (:mod:`prism_jax.features`) share them.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prism_jax import cache
from prism_jax.data import to_float


def train_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray, seed: int = 0,
                     epochs: int = 3, batch_size: int = 128, verbose: bool = False):
  """Trains a classifier whose ``apply`` returns ``(..., logits)`` on uint8 images with
  Adam (1e-3) and cross-entropy; returns its params (``verbose``: a line per epoch)."""
  key = jax.random.key(seed)
  params = model.init(key, jnp.zeros((1, *images.shape[1:])))["params"]
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      logits = model.apply({"params": p}, to_float(x))[1]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  rng, t0 = np.random.default_rng(seed), time.perf_counter()
  for epoch in range(epochs):
    order = rng.permutation(len(images))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      b = order[i:i + batch_size]
      params, opt_state = step(params, opt_state, images[b], labels[b])
    if verbose:   # the first run of a machine trains these for minutes: say so
      jax.block_until_ready(params)
      print(f"  {type(model).__name__}: epoch {epoch + 1}/{epochs} on {len(images):,} "
            f"images ({time.perf_counter() - t0:.0f}s)", flush=True)
  return params


def apply_classifier(model: nn.Module, params, x):
  """``(embeddings, logits)`` of a classifier module with ``params``."""
  return model.apply({"params": params}, x)


def cached_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                      cache_path: str | None, seed: int = 0, epochs: int = 3,
                      augment: Callable | None = None):
  """:func:`train_classifier`'s params, trained once and cached in ``cache_path``; a stale
  cache (another architecture or number of classes) is retrained. ``augment(images,
  labels) -> (images, labels)`` builds the training set, only when training is needed."""
  apply = functools.partial(apply_classifier, model)

  def train():
    print(f"training the {type(model).__name__} classifier once ({epochs} epochs; cached in "
          f"{cache_path})", flush=True)
    data = augment(images, labels) if augment else (images, labels)
    params = train_classifier(model, *data, seed, epochs, verbose=True)
    return {"/".join(k): np.asarray(v)
            for k, v in flax.traverse_util.flatten_dict(params).items()}

  def unflatten(flat):
    return flax.traverse_util.unflatten_dict(
        {tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()})

  def valid(flat):
    try:
      jax.eval_shape(apply, unflatten(flat), jnp.zeros((1, *images.shape[1:])))
      return True
    except Exception:
      return False

  return unflatten(cache.arrays(cache_path, train, valid))
