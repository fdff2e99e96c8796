"""Evaluation during training: a fixed noise batch, embedded and compared with real data.

A PRISM model is a distribution over masks, so "its samples" can mean three things; each
is reported under its own name (``<embedder>_<metric>_<mode>``, e.g. ``domain_fid_fixed``):

* ``fixed``: one mask ``M ~ Bernoulli(theta)`` for every sample, drawn with the run's export
  key: the 1-bit model that is exported (at the last round, exactly ``model.npz``);
* ``resampled``: a fresh mask for every generated batch of 128, as the official evaluation
  does (10k images = a mixture of ~79 masks): the stochastic model ``theta`` itself;
* ``threshold``: the deterministic mask ``theta > 0.5``.

The dense FedAvg baseline has no mask: its one model is reported as ``fixed``. The same
``z`` and keys are used every time, so successive metrics show the progress of the scores
alone. Generation runs in batches of 128 for every mode (the generator's BatchNorm uses batch
statistics). Real embeddings are computed once per dataset and embedder and cached.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from prism_jax import cache, embedders, features, generator, masking, metrics


MODES = ("fixed", "resampled", "threshold")
GENERATE_BATCH = 128   # the official evaluation's forward batch: one mask per batch


def _generate(model, dense: bool, mode: str, weights, params, z, key):
  if dense:
    return model.apply({"params": params}, z)
  theta = masking.keep_prob(params)
  if mode == "threshold":
    binary = jax.tree.map(lambda t: t > 0.5, theta)
  else:   # the same bits as export.final_mask(key, params)
    binary = masking.sample_binary(key, theta)
  return generator.apply_binary(model, weights, binary, z)


@functools.lru_cache(maxsize=32)
def generate_fn(model: generator.ResNetGenerator, dense: bool, mode: str):
  """The jitted ``(weights, params, z, key) -> images`` of one view (compiled once)."""
  return jax.jit(functools.partial(_generate, model, dense, mode))


def sample(model: generator.ResNetGenerator, weights, params, z, key: jax.Array,
           mode: str = "fixed", dense: bool = False, batch_size: int = GENERATE_BATCH
           ) -> np.ndarray:
  """Images of the global model in one of :data:`MODES`, generated ``batch_size`` at a time:
  ``fixed`` uses the mask drawn with ``key`` for all of them, ``resampled`` draws one with
  ``fold_in(key, batch index)`` per batch, ``threshold`` keeps ``theta > 0.5``."""
  if mode not in MODES:
    raise ValueError(f"unknown evaluation mode {mode!r}; choose from {MODES}")
  fn = generate_fn(model, dense, mode)
  out = []
  for i, start in enumerate(range(0, len(z), batch_size)):
    k = jax.random.fold_in(key, i) if mode == "resampled" else key
    out.append(np.asarray(fn(weights, params, z[start:start + batch_size], k)))
  return np.concatenate(out)


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
  modes: tuple[str, ...] = MODES
  judges: tuple[embedders.Embedder, embedders.Embedder] | None = None   # legibility

  def __post_init__(self):
    bad = [m for m in self.modes if m not in MODES]
    if bad or not self.modes:
      raise ValueError(f"evaluation modes must be a non-empty subset of {MODES}, got "
                       f"{self.modes}")
    if self.dense:
      self.modes = ("fixed",)

  def samples(self, weights, scores, mode: str = "fixed") -> np.ndarray:
    return sample(self.model, weights, scores, self.z, self.mask_key, mode, self.dense)

  def metrics(self, fake: np.ndarray, mode: str) -> dict[str, float]:
    emb, logits = self.embedder.embed(fake, self.batch_size)
    p = self.embedder.name
    out = {"fid": metrics.fid(self.real_emb, emb), **metrics.prdc(self.real_emb, emb, self.k)}
    if logits is not None:
      out["is"] = metrics.inception_score(logits)
    out = {f"{p}_{k}_{mode}": v for k, v in out.items()}
    if self.judges:
      out[f"legibility_{mode}"] = metrics.legibility(
          *(judge.embed(fake, self.batch_size)[1] for judge in self.judges))
    return out

  def __call__(self, weights, scores) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``({"<embedder>_fid_<mode>", ..._precision/recall/density/coverage, ..._is,
    "legibility_<mode>"}, images by mode)`` for every mode of :attr:`modes`."""
    out, images = {}, {}
    for mode in self.modes:
      images[mode] = self.samples(weights, scores, mode)
      out.update(self.metrics(images[mode], mode))
    return out, images


def make_evaluator(model, splits, num_classes: int, key: jax.Array, num_samples: int,
                   cache_dir: str, dataset: str, inception_weights: str | None = None,
                   domain_epochs: int = 3, domain_train_examples: int | None = None,
                   dense: bool = False, mask_key: jax.Array | None = None,
                   modes: tuple[str, ...] = MODES, legibility: bool = False) -> Evaluator:
  """Builds the embedder (Inception from a file, else the offline domain classifier), the
  real test-split embeddings (cached) and, with ``legibility``, the two judges of
  :func:`metrics.legibility` (trained on the held-out split, cached). ``z`` comes from
  ``key``; the masks from ``mask_key`` (pass the export key so that ``fixed`` is the
  exported model)."""
  size = model.image_size
  valid = splits["valid"]
  n = min(domain_train_examples or len(valid.labels), len(valid.labels))
  if inception_weights:
    emb = embedders.inception(inception_weights)
  else:
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
  judges = (embedders.legibility_judges(valid.images[:n], valid.labels[:n], num_classes,
                                        cache_dir, dataset) if legibility else None)
  return Evaluator(model, emb, real_emb, z, k_mask if mask_key is None else mask_key,
                   dense=dense, modes=tuple(modes), judges=judges)
