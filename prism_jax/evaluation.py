"""Evaluation during training: a fixed noise batch, embedded and compared with real data.

The same ``z`` and mask key every time, so successive sample grids and metrics show the
progress of the scores alone. Real embeddings are computed once per dataset and embedder
and cached.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from prism_jax import cache, embedders, features, generator, metrics


@dataclasses.dataclass
class Evaluator:
  model: generator.ResNetGenerator
  embedder: embedders.Embedder
  real_emb: np.ndarray
  z: jax.Array
  mask_key: jax.Array
  batch_size: int = 500
  k: int = 5
  dense: bool = False   # the FedAvg baseline: ``scores`` are the trained dense weights

  def __post_init__(self):
    self._generate = jax.jit(functools.partial(generator.images, self.model,
                                               key=self.mask_key, dense=self.dense))

  def samples(self, weights, scores) -> np.ndarray:
    return np.concatenate([np.asarray(self._generate(weights, scores, self.z[i:i + self.batch_size]))
                           for i in range(0, len(self.z), self.batch_size)])

  def __call__(self, weights, scores) -> tuple[dict[str, float], np.ndarray]:
    """``({"<embedder>_fid", ..._precision/recall/density/coverage, ..._is}, images)``."""
    fake = self.samples(weights, scores)
    emb, logits = self.embedder.embed(fake, self.batch_size)
    p = self.embedder.name
    out = {f"{p}_fid": metrics.fid(self.real_emb, emb)}
    out.update({f"{p}_{k}": v for k, v in metrics.prdc(self.real_emb, emb, self.k).items()})
    if logits is not None:
      out[f"{p}_is"] = metrics.inception_score(logits)
    return out, fake


def make_evaluator(model, splits, num_classes: int, key: jax.Array, num_samples: int,
                   cache_dir: str, dataset: str, inception_weights: str | None = None,
                   domain_epochs: int = 3, domain_train_examples: int | None = None,
                   dense: bool = False) -> Evaluator:
  """Builds the embedder (Inception from a file, else the offline domain classifier) and
  the real test-split embeddings (cached)."""
  size = model.image_size
  if inception_weights:
    emb = embedders.inception(inception_weights)
  else:
    valid = splits["valid"]
    n = min(domain_train_examples or len(valid.labels), len(valid.labels))
    path = os.path.join(cache_dir, f"domain-{dataset}-{size}-{n}-e{domain_epochs}.npz")
    emb = embedders.domain(valid.images[:n], valid.labels[:n], num_classes, path,
                           epochs=domain_epochs)
  test = splits["test"]
  real = test.images[:num_samples]
  tag = features.fingerprint(emb.name, emb.params)
  real_path = os.path.join(cache_dir, f"real-emb-{dataset}-{size}-{len(real)}-{tag}.npz")
  real_emb = cache.arrays(real_path, lambda: {"emb": emb.embed(real)[0]},
                          lambda a: len(a["emb"]) == len(real))["emb"]
  k_z, k_mask = jax.random.split(key)
  z = jax.random.normal(k_z, (num_samples, model.nz))
  return Evaluator(model, emb, real_emb, z, k_mask, dense=dense)
