"""The legibility judges: the blur they are trained with, and what they accept and refuse."""
import numpy as np
import pytest
from scipy import ndimage

from prism_jax import classifiers, data, embedders, metrics


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_gaussian_blur_matches_scipy(sigma):
  x = np.random.default_rng(0).integers(0, 256, (3, 12, 10, 1)).astype(np.uint8)
  want = ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0), mode="nearest",
                                 truncate=3.0)
  got = embedders.gaussian_blur(x, sigma)
  assert got.dtype == np.uint8 and got.shape == x.shape
  assert np.max(np.abs(got.astype(np.float64) - want)) <= 0.5 + 1e-6
  np.testing.assert_array_equal(embedders.gaussian_blur(x, 0.0), x)


def test_judges_are_cached_per_dataset(tmp_path, monkeypatch):
  x = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 1)).astype(np.uint8)
  y = np.arange(64) % 10
  trained = []
  real_train = classifiers.train_classifier
  monkeypatch.setattr(classifiers, "train_classifier",
                      lambda model, images, *a, **kw: trained.append(len(images))
                      or real_train(model, images, *a, **kw))
  judges = embedders.legibility_judges(x, y, 10, str(tmp_path), "a", epochs=1)
  assert trained == [64 * len(embedders.JUDGE_BLURS)] * 2     # blurred copies included
  again = embedders.legibility_judges(x, y, 10, str(tmp_path), "a", epochs=1)
  assert len(trained) == 2                                     # from the cache
  for j, k in zip(judges, again):
    np.testing.assert_array_equal(j.embed(x[:4])[1], k.embed(x[:4])[1])
  embedders.legibility_judges(x, y, 10, str(tmp_path), "b", epochs=1)
  assert len(trained) == 4                                     # another dataset: its own


@pytest.mark.slow
def test_judges_read_soft_digits_and_refuse_broken_ones(tmp_path):
  """As the default run trains them: the whole held-out split, default epochs."""
  splits = data.load("mnist_offline", 32)
  valid, test = splits["valid"], splits["test"]
  judges = embedders.legibility_judges(valid.images, valid.labels, 10, str(tmp_path),
                                       "mnist_offline")
  def legible(x):
    return metrics.legibility(*(j.embed(x)[1] for j in judges))
  real = test.images[:500]
  erased = real.copy()
  erased[:, :, 16:] = 0                             # the right half of every digit gone
  assert legible(real) > 0.5
  assert legible(embedders.gaussian_blur(real, 1.0)) > legible(real) - 0.15
  assert legible(erased) < legible(real) / 2
