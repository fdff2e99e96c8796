"""InceptionV3 embedder on a random torchvision-layout weights file written by the test."""
import numpy as np
import pytest

from prism_jax import embedders, inception


def _write(path, num_classes=1008, break_key=None):
  rng = np.random.default_rng(0)
  state = {}
  for k, shape in inception.layout(num_classes).items():
    if k.endswith(("running_var", "bn.weight")):
      state[k] = (1 + 0.1 * rng.standard_normal(shape) ** 2).astype(np.float32)
    elif len(shape) == 4:
      state[k] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    else:
      state[k] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
  if break_key:
    state[break_key] = state[break_key][..., :1]
  np.savez(path, **state)


def test_random_weights_embed_and_classify(tmp_path):
  _write(tmp_path / "inc.npz")
  emb = embedders.inception(str(tmp_path / "inc.npz"))
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  e, logits = emb.embed(images)
  assert e.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(e)) and np.all(e >= 0)          # post-ReLU average pool
  assert not np.allclose(e[0], e[1])                          # depends on the input
  # Embedding is a function of the image content only, batch by batch.
  e0, _ = emb.embed(images[:1])
  np.testing.assert_allclose(e0[0], e[0], rtol=1e-4, atol=1e-5)


def test_wrong_layer_shape_named(tmp_path):
  _write(tmp_path / "bad.npz", break_key="Mixed_6b.branch7x7_2.conv.weight")
  with pytest.raises(ValueError, match="layer 'Mixed_6b.branch7x7_2.conv.weight' has shape"):
    inception.load_params(str(tmp_path / "bad.npz"))
