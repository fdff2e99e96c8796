import numpy as np
import pytest

from prism_jax import partition


def _labels(n=2000, classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("split,kw", [("iid", {}), ("iid", {"unbalance": 1.0}),
                                      ("shards", {"divide": 4}), ("dirichlet", {"alpha": 0.5})])
def test_disjoint_cover_and_deterministic(split, kw):
  labels = _labels()
  parts = partition.partition(labels, 10, split, seed=3, **kw)
  allidx = np.concatenate(parts)
  assert len(allidx) == len(labels) and len(np.unique(allidx)) == len(labels)
  again = partition.partition(labels, 10, split, seed=3, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("divide", [1, 2, 4])
def test_shards_hold_at_most_divide_labels(divide):
  # Unequal class sizes (as in MNIST), so label-sorted cuts would straddle classes.
  labels = _labels(3000)
  hist = partition.label_histogram(labels, partition.shards(labels, 10, divide, seed=1))
  assert np.all((hist > 0).sum(1) <= divide)
  assert hist.sum() == len(labels)


def test_unbalanced_iid_sizes_spread_with_sigma():
  labels = _labels(5000)

  def spread(sigma):
    sizes = [len(p) for p in partition.iid(labels, 10, seed=0, unbalance=sigma)]
    assert min(sizes) >= 1 and sum(sizes) == len(labels)
    return max(sizes) / min(sizes)

  assert spread(0.0) <= 1.01 < spread(0.5) < spread(2.0)


def test_summary_counts_and_skew():
  labels = np.array([0, 0, 1, 1, 1, 2])
  s = partition.summary(labels, [np.array([0, 1, 2]), np.array([3, 4, 5])], num_classes=3)
  assert s["counts"] == [3, 3] and s["label_histogram"] == [[2, 1, 0], [0, 2, 1]]
  assert s["labels_per_client"] == [2, 2]
  np.testing.assert_allclose(s["max_label_share"], [2 / 3, 2 / 3], atol=1e-4)
  assert len(partition.format_summary(s).splitlines()) == 4


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
    (lambda l: partition.shards(l[:30], 10, divide=4), "40 shards .* only 30 samples"),
    (lambda l: partition.shards(l, 10, divide=0), "divide must be >= 1"),
    (lambda l: partition.iid(l, 10, unbalance=-1), "unbalance must be >= 0"),
])
def test_bad_splits(call, match):
  with pytest.raises(ValueError, match=match):
    call(_labels())
