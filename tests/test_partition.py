import numpy as np
import pytest

from prism_jax import partition


def _labels(n=2000, classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("split,kw", [("iid", {}), ("shards", {"divide": 4}),
                                      ("dirichlet", {"alpha": 0.5})])
def test_disjoint_cover_and_deterministic(split, kw):
  labels = _labels()
  parts = partition.partition(labels, 10, split, seed=3, **kw)
  allidx = np.concatenate(parts)
  assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)
  again = partition.partition(labels, 10, split, seed=3, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_shards_hold_at_most_divide_labels():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))
  hist = partition.label_histogram(labels, partition.shards(labels, 10, divide=2, seed=1))
  assert np.all((hist > 0).sum(1) <= 2)
  assert (hist > 0).sum(1).mean() < 10   # far from IID


def test_dirichlet_skew_grows_as_alpha_shrinks():
  labels = _labels(5000)

  def skew(alpha):   # mean over clients of the largest label share
    hist = partition.label_histogram(labels, partition.dirichlet(labels, 10, alpha, seed=0))
    return np.mean(hist.max(1) / np.maximum(hist.sum(1), 1))

  assert skew(0.05) > skew(1.0) > skew(100.0)


def test_to_client_data_pads_unequal_clients():
  images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
  data = partition.to_client_data(images, [np.array([0, 1, 2]), np.array([4])])
  assert data.images.shape == (2, 3, 1, 1, 1)
  np.testing.assert_array_equal(data.counts, [3, 1])
  np.testing.assert_array_equal(data.images[1, :, 0, 0, 0], [4, 0, 0])


@pytest.mark.parametrize("call,match", [
    (lambda l: partition.partition(l, 10, "pathological"), "unknown split"),
    (lambda l: partition.iid(l[:5], 10), "10 clients but only 5 samples"),
    (lambda l: partition.dirichlet(l, 10, 0.0), "alpha must be > 0"),
    (lambda l: partition.dirichlet(l[:40], 10, 0.001, min_size=5), "fewer than min_size=5"),
])
def test_bad_splits(call, match):
  with pytest.raises(ValueError, match=match):
    call(_labels())
