"""Extractors and the per-client real-feature statistics cache."""
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
