import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import client, generator


def test_sample_batch_never_reads_padding():
  images = jnp.zeros((10, 2, 2, 1), jnp.uint8).at[4:].set(255)   # rows >= count are padding
  batch = client.sample_batch(jax.random.key(0), images, jnp.int32(4), 256)
  chex.assert_shape(batch, (256, 2, 2, 1))
  np.testing.assert_allclose(batch, -1.0)      # uint8 0 -> -1: only real rows were drawn


def test_gradients_reach_scores_only(tiny_model, tiny_objective, key):
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(key, w)
  real = jax.random.uniform(jax.random.key(1), (8, 16, 16, 1), minval=-1, maxval=1)
  g_scores, g_weights = jax.jit(jax.grad(lambda *a: tiny_objective(*a)[0], argnums=(0, 1)))(
      s, w, real, key)
  chex.assert_tree_all_finite(g_scores)
  for leaf in jax.tree.leaves(g_scores):
    assert float(jnp.abs(leaf).sum()) > 0
  # The client update never differentiates the weights: its state holds scores only.
  state = client.client_init(s, client.LocalConfig())
  assert jax.tree.structure(state.scores) == jax.tree.structure(w)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(g_weights))


def test_local_training_lowers_loss_and_uploads_bits(tiny_model, tiny_objective, key):
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(key, w)
  images = jnp.zeros((1, 32, 16, 16, 1), jnp.uint8).at[:, :, 4:12, 6:10].set(255)  # a bar
  cfg = client.LocalConfig(local_steps=30, batch_size=16, learning_rate=0.1)
  update = jax.jit(functools.partial(client.client_update, objective=tiny_objective, cfg=cfg))
  mask, loss_state, metrics = update(s, w, images[0], jnp.int32(32), key)
  assert loss_state == ()
  assert float(metrics["loss_last"]) < float(metrics["loss_first"])
  chex.assert_trees_all_equal_shapes(mask, s)
  assert all(m.dtype == jnp.bool_ for m in jax.tree.leaves(mask))


def test_client_final_dp_noise_changes_upload(tiny_model, key):
  s = generator.init_scores(key, generator.init_weights(tiny_model, 0))
  state = client.client_init(s, client.LocalConfig())
  plain = client.client_final(state, jax.random.key(5), client.LocalConfig())
  noisy = client.client_final(state, jax.random.key(5), client.LocalConfig(dp_noise_std=0.5))
  assert not all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain),
                                                        jax.tree.leaves(noisy)))


@pytest.mark.parametrize("kwargs,match", [(dict(local_steps=0), "local_steps"),
                                          (dict(learning_rate=0.0), "learning_rate"),
                                          (dict(estimator="gumbel"), "estimator"),
                                          (dict(dp_clip=0.6), "clip"),
                                          (dict(dp_noise_std=-1.0), "noise")])
def test_bad_local_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    client.LocalConfig(**kwargs)
