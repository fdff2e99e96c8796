import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import communication, export, generator, masking


def test_pack_unpack_round_trip(tiny_model, key):
  like = generator.init_weights(tiny_model, 0)
  mask = export.final_mask(key, generator.init_scores(key, like))
  bits = export.pack(mask)
  assert bits.dtype == np.uint8 and bits.size == (masking.num_weights(like) + 7) // 8
  chex.assert_trees_all_equal(export.unpack(bits, like), jax.device_get(mask))


def test_save_load_gives_identical_generator(tiny_model, key, tmp_path):
  w = generator.init_weights(tiny_model, 3)
  mask = export.final_mask(key, generator.init_scores(key, w))
  path = str(tmp_path / "model.npz")
  size = export.save_model(path, tiny_model, 3, mask)
  assert size == (tmp_path / "model.npz").stat().st_size
  z = jax.random.normal(jax.random.key(9), (4, tiny_model.nz))
  expected = generator.apply_binary(tiny_model, w, mask, z)
  chex.assert_trees_all_close(export.load_generator(path)(z), expected, atol=1e-5)
  model, seed, loaded = export.load_model(path)
  assert model == tiny_model and seed == 3
  chex.assert_trees_all_equal(loaded, jax.device_get(mask))


def test_paper_model_export_under_five_percent_of_dense(tmp_path, key):
  model = generator.ResNetGenerator(32, 1, 128, 64)
  like = jax.eval_shape(lambda: generator.init_weights(model, 0))
  mask = jax.tree.map(lambda s: jnp.ones(s.shape, bool), like)
  size = export.save_model(str(tmp_path / "m.npz"), model, 0, mask)
  n = masking.num_weights(like)
  assert size < 0.05 * communication.dense_bytes(n)
  assert size < 1.01 * communication.mask_bytes(n) + 1024   # bits + a small header


def test_corrupt_export_is_named(tmp_path):
  path = tmp_path / "broken.npz"
  path.write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="broken.npz is not a PRISM model export"):
    export.load_model(str(path))
