import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prism_jax import client, features, generator, losses, masking


def test_sample_batch_never_reads_padding():
  images = jnp.zeros((10, 2, 2, 1), jnp.uint8).at[4:].set(255)   # rows >= count are padding
  batch = client.sample_batch(jax.random.key(0), images, jnp.int32(4), 256)
  chex.assert_shape(batch, (256, 2, 2, 1))
  np.testing.assert_allclose(batch, -1.0)      # uint8 0 -> -1: only real rows were drawn


def test_epoch_batches_walk_the_data_without_replacement():
  # 12 real rows (values 1..12) padded to 16; batches of 4: epoch 0 is steps 0-2, every row
  # once; epoch 1 (steps 3-5) another order of the same rows.
  images = np.zeros((16, 1, 1, 1), np.float32)
  images[:12, 0, 0, 0] = np.arange(1, 13)
  key = jax.random.key(0)
  rows = [np.asarray(client.epoch_batch(key, jnp.int32(t), jnp.asarray(images), jnp.int32(12),
                                        4)).ravel() for t in range(6)]
  first, second = np.concatenate(rows[:3]), np.concatenate(rows[3:])
  assert sorted(first) == sorted(second) == list(range(1, 13))   # no padding, no repeats
  assert list(first) != list(second)                               # reshuffled
  straddle = np.asarray(client.epoch_batch(key, jnp.int32(2), jnp.asarray(images),
                                           jnp.int32(10), 4)).ravel()
  assert straddle.min() >= 1 and straddle.max() <= 10         # only the 10 counted rows
  assert len(set(straddle[:2])) == 2                          # end of epoch 0, then epoch 1
  with pytest.raises(ValueError, match="sampling"):
    client.LocalConfig(sampling="stratified")


def test_client_update_reads_epoch_batches_when_asked(tiny_model, tiny_objective, key):
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(key, w)
  images = jax.random.randint(jax.random.key(1), (12, 16, 16, 1), 0, 256).astype(jnp.uint8)
  out = {}
  for sampling in client.SAMPLINGS:
    cfg = client.LocalConfig(local_steps=3, batch_size=4, sampling=sampling)
    _, _, metrics = jax.jit(functools.partial(client.client_update, objective=tiny_objective,
                                              cfg=cfg))(s, w, images, jnp.int32(12), key)
    out[sampling] = float(metrics["loss"])
  assert np.isfinite(list(out.values())).all() and out["uniform"] != out["epochs"]


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


def test_replayed_masks_give_the_drawn_step(tiny_model, tiny_objective, key):
  """A step given the masks its key draws is the step itself (bitwise); other masks give
  another step."""
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(key, w)
  images = jax.random.randint(jax.random.key(1), (1, 32, 16, 16, 1), 0, 256).astype(jnp.uint8)
  cfg = client.LocalConfig(local_steps=1, batch_size=8)
  k_mask = jax.random.split(jax.random.split(key)[1])[1]   # client_step, then Objective
  theta = masking.keep_prob(s)
  drawn = jax.tree.map(jax.random.bernoulli, masking.leaf_keys(k_mask, theta), theta)
  step = jax.jit(lambda m: client.client_step(client.client_init(s, cfg), w, images[0],
                                              jnp.int32(32), key, objective=tiny_objective,
                                              cfg=cfg, masks=m))
  (a, la), (b, lb) = step(None), step(drawn)
  chex.assert_trees_all_equal((a.scores, la), (b.scores, lb))
  c, lc = step(jax.tree.map(jnp.logical_not, drawn))
  assert float(lc) != float(la)


def test_local_training_lowers_loss_and_uploads_bits(tiny_model, tiny_objective, key):
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(key, w)
  images = jnp.zeros((1, 32, 16, 16, 1), jnp.uint8).at[:, :, 4:12, 6:10].set(255)  # a bar
  cfg = client.LocalConfig(local_steps=30, batch_size=16, learning_rate=0.1)
  update = jax.jit(functools.partial(client.client_update, objective=tiny_objective, cfg=cfg))
  mask, local, metrics = update(s, w, images[0], jnp.int32(32), key)
  assert local == client.LocalState()
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
                                          (dict(dp_noise_std=-1.0), "noise"),
                                          (dict(dp_mode="clamp"), "dp_mode")])
def test_bad_local_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    client.LocalConfig(**kwargs)



def test_carried_optimizer_state_equals_a_manual_two_round_loop(tiny_model, key):
  """Official behaviour: Adam's moments and step count survive the round boundary, where only
  the scores are replaced by the new global ones."""
  objective = client.Objective(tiny_model, features.pixels, losses.gaussian_mmd)
  w = generator.init_weights(tiny_model, 0)
  s0 = generator.init_scores(key, w)
  s1 = generator.init_scores(jax.random.key(9), w)          # "the next round's global scores"
  images = jax.random.randint(jax.random.key(2), (8, 16, 16, 1), 0, 256).astype(jnp.uint8)
  cfg = client.LocalConfig(local_steps=3, batch_size=8, carry_optimizer=True)
  update = jax.jit(functools.partial(client.client_update, objective=objective, cfg=cfg))
  k1, k2 = jax.random.key(11), jax.random.key(12)
  local0 = client.init_local_state(objective, cfg, s0)
  _, local1, _ = update(s0, w, images, jnp.int32(8), k1, local=local0)
  _, local2, _ = update(s1, w, images, jnp.int32(8), k2, local=local1)

  # By hand, with the same keys (client_update splits its key as below).
  opt_state = cfg.optimizer().init(s0)
  for s, k in ((s0, k1), (s1, k2)):
    for kk in jax.random.split(jax.random.split(k)[0], cfg.local_steps):
      k_batch, k_loss = jax.random.split(kk)
      real = client.sample_batch(k_batch, images, jnp.int32(8), cfg.batch_size)
      g = jax.grad(lambda x: objective(x, w, real, k_loss)[0])(s)
      updates, opt_state = cfg.optimizer().update(g, opt_state, s)
      s = optax.apply_updates(s, updates)
  chex.assert_trees_all_close(local2.opt, opt_state, rtol=1e-5, atol=1e-6)
  assert int(jax.tree.leaves(local2.opt)[0]) == 2 * cfg.local_steps   # Adam's step count

  # Without carrying, each round starts a fresh optimizer and keeps no optimizer state.
  fresh = dataclasses.replace(cfg, carry_optimizer=False)
  _, local, _ = jax.jit(functools.partial(client.client_update, objective=objective,
                                          cfg=fresh))(s1, w, images, jnp.int32(8), k2)
  assert local.opt == ()


def test_official_dp_mode_clamps_scores_and_adds_no_noise(tiny_model, key):
  s = generator.init_scores(key, generator.init_weights(tiny_model, 0))
  state = client.client_init(s, client.LocalConfig())
  cfg = client.LocalConfig(dp_mode="official", dp_noise_std=5.0, dp_clip=0.1)
  got = client.client_final(state, jax.random.key(5), cfg)
  k_mask = jax.random.split(jax.random.key(5))[1]
  theta = jax.tree.map(lambda x: jnp.clip(x, 0.1, 0.9), s)     # raw scores as probabilities
  chex.assert_trees_all_equal(got, masking.sample_binary(k_mask, theta))
