"""Sample-quality metrics on embeddings: FID, precision / recall / density / coverage, IS;
and legibility from two classifiers' logits.

All take embeddings ``[N, D]`` from a pluggable embedder (:mod:`prism_jax.embedders`); the
name of a reported FID says which embedder produced it (Inception-FID is "fid"; the offline
domain classifier's is "domain_fid", never plain "FID").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_stats(emb) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of embeddings, in float64 on the host."""
  x = np.asarray(emb, np.float64)
  return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Heusel et al. 2017).

  The trace of the matrix square root is computed stably in float64 as the sum of square
  roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (symmetric PSD; tiny negative
  eigenvalues from round-off are clipped to 0), so no complex ``sqrtm`` is needed.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2,
                                                                                  np.float64))
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = root1 @ s2 @ root1
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_sqrt = np.sum(np.sqrt(np.clip(eig, 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid(real_emb, fake_emb) -> float:
  """Frechet distance between Gaussians fitted to two embedding sets."""
  return frechet_distance(*gaussian_stats(real_emb), *gaussian_stats(fake_emb))


@jax.jit
def _pairwise(a, b):
  sq = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2 * a @ b.T
  return jnp.sqrt(jnp.maximum(sq, 0.0))


def prdc(real_emb, fake_emb, k: int = 5) -> dict[str, float]:
  """Precision, recall, density and coverage (Naeem et al. 2020) with k-NN balls.

  A real point's ball has the radius of its k-th nearest real neighbour (itself excluded);
  precision = fraction of fakes inside some real ball; recall = fraction of reals inside
  some fake ball (fake radii); density = mean number of real balls holding a fake / k;
  coverage = fraction of real balls holding at least one fake.
  """
  real = jnp.asarray(real_emb, jnp.float32)
  fake = jnp.asarray(fake_emb, jnp.float32)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"prdc needs more than k={k} real and fake embeddings")
  d_rr, d_ff, d_rf = _pairwise(real, real), _pairwise(fake, fake), _pairwise(real, fake)
  r_real = jnp.sort(d_rr, axis=1)[:, k]       # column 0 is the point itself
  r_fake = jnp.sort(d_ff, axis=1)[:, k]
  inside = d_rf <= r_real[:, None]            # [real, fake]: fake j in real ball i
  return {
      "precision": float(jnp.mean(jnp.any(inside, axis=0))),
      "recall": float(jnp.mean(jnp.any(d_rf <= r_fake[None, :], axis=1))),
      "density": float(jnp.sum(inside) / (k * fake.shape[0])),
      "coverage": float(jnp.mean(jnp.min(d_rf, axis=1) <= r_real)),
  }


def inception_score(logits, splits: int = 1) -> float:
  """``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits ``[N, classes]``."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  scores = []
  for part in jnp.array_split(logp, splits):
    p_y = jax.scipy.special.logsumexp(part, axis=0) - jnp.log(part.shape[0])
    kl = jnp.sum(jnp.exp(part) * (part - p_y), axis=1)
    scores.append(float(jnp.exp(jnp.mean(kl))))
  return float(np.mean(scores))


def legibility(logits_a, logits_b, confidence: float = 0.9) -> float:
  """Fraction of samples that two independently trained classifiers (logits ``[N,
  classes]``) both put in the same class, each with probability >= ``confidence``: a
  sample a reader would call a clear instance of some class. Unlike FID it ignores how the
  samples spread over classes and, with judges trained on blurred copies
  (:func:`prism_jax.embedders.legibility_judges`), how soft their edges are."""
  pa = jax.nn.softmax(jnp.asarray(logits_a, jnp.float32), axis=-1)
  pb = jax.nn.softmax(jnp.asarray(logits_b, jnp.float32), axis=-1)
  agree = jnp.argmax(pa, -1) == jnp.argmax(pb, -1)
  sure = (jnp.max(pa, -1) >= confidence) & (jnp.max(pb, -1) >= confidence)
  return float(jnp.mean(agree & sure))
