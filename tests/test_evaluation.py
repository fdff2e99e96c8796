"""The three views of a PRISM model in evaluation: fixed, resampled (official), threshold."""
import chex
import jax
import numpy as np
import pytest

from prism_jax import evaluation, export, generator, masking


@pytest.fixture
def trained(tiny_model, key):
  w = generator.init_weights(tiny_model, 0)
  return w, generator.init_scores(key, w)


def _with_mask(model, w, binary, z):
  return np.asarray(generator.apply_binary(model, w, binary, z))


def test_fixed_mode_is_the_exported_model(tiny_model, trained):
  w, s = trained
  z = jax.random.normal(jax.random.key(1), (6, tiny_model.nz))
  k = jax.random.key(7)
  got = evaluation.sample(tiny_model, w, s, z, k, "fixed", batch_size=6)
  np.testing.assert_allclose(got, _with_mask(tiny_model, w, export.final_mask(k, s), z),
                             atol=1e-5)   # same bits; two XLA programs round differently


def test_resampled_mode_draws_a_new_mask_per_batch(tiny_model, trained):
  """The official protocol: batch i uses the mask drawn with fold_in(key, i)."""
  w, s = trained
  z = jax.random.normal(jax.random.key(1), (8, tiny_model.nz))
  k = jax.random.key(7)
  got = evaluation.sample(tiny_model, w, s, z, k, "resampled", batch_size=4)
  chex.assert_shape(got, (8, 16, 16, 1))
  for i in range(2):
    mask = masking.sample_binary(jax.random.fold_in(k, i), masking.keep_prob(s))
    np.testing.assert_allclose(got[4 * i:4 * i + 4],
                               _with_mask(tiny_model, w, mask, z[4 * i:4 * i + 4]), atol=1e-5)
  masks = [masking.sample_binary(jax.random.fold_in(k, i), masking.keep_prob(s)) for i in (0, 1)]
  assert not all(np.array_equal(a, b) for a, b in zip(*map(jax.tree.leaves, masks)))
  fixed = evaluation.sample(tiny_model, w, s, z, k, "fixed", batch_size=4)
  assert not np.allclose(fixed[4:], got[4:])


def test_threshold_mode_keeps_theta_above_half(tiny_model, trained):
  w, s = trained
  z = jax.random.normal(jax.random.key(1), (4, tiny_model.nz))
  got = evaluation.sample(tiny_model, w, s, z, jax.random.key(0), "threshold")
  thr = jax.tree.map(lambda x: x > 0, s)
  np.testing.assert_allclose(got, _with_mask(tiny_model, w, thr, z), atol=1e-5)
  with pytest.raises(ValueError, match="unknown evaluation mode 'mean'"):
    evaluation.sample(tiny_model, w, s, z, jax.random.key(0), "mean")
