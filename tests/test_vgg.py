"""VGG19 extractor: torchvision-layout weights file -> Flax, against an independent NCHW
reference computed on the same weights."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import vgg

WIDTH = 0.0625     # 4..32 channels: the real layer structure at test speed


def _random_state(batch_norm, seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for k, shape in vgg.torch_layout(batch_norm, WIDTH).items():
    if k.endswith("running_var"):
      state[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif k.endswith(".weight") and len(shape) == 4:
      state[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
    else:
      state[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return state


def _reference(state, images, batch_norm, train_mode=False):
  """torchvision's forward in NCHW with OIHW kernels, written independently; ``train_mode``:
  as the official PRISM code runs it (BN on batch statistics, raw [-1, 1] inputs)."""
  x = (np.repeat(images, 3, -1) if images.shape[-1] == 1 else images)
  if not train_mode:
    x = ((x + 1) / 2 - np.array(vgg.IMAGENET_MEAN)) / np.array(vgg.IMAGENET_STD)
  x = jnp.asarray(x.transpose(0, 3, 1, 2), jnp.float32)
  feats, idx = [], 0
  for block in vgg.BLOCKS:
    for _ in block:
      w, b = state[f"features.{idx}.weight"], state[f"features.{idx}.bias"]
      x = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
      x = x + b[None, :, None, None]
      idx += 1
      if batch_norm:
        g, be, m, v = (state[f"features.{idx}.{k}"][None, :, None, None]
                       for k in ("weight", "bias", "running_mean", "running_var"))
        if train_mode:   # PyTorch training mode: this batch's mean and biased variance
          m = jnp.mean(x, axis=(0, 2, 3), keepdims=True)
          v = jnp.mean(jnp.square(x - m), axis=(0, 2, 3), keepdims=True)
        x = (x - m) / np.sqrt(v + 1e-5) * g + be
        idx += 1
      x = jax.nn.relu(x)
      idx += 1
      feats.append(x)
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    idx += 1
  return feats


@pytest.mark.parametrize("batch_norm,channels,official", [(False, 3, False), (True, 1, False),
                                                          (True, 1, True), (True, 3, True)])
def test_converted_weights_match_reference(tmp_path, batch_norm, channels, official):
  state = _random_state(batch_norm)
  np.savez(tmp_path / "vgg.npz", **state)
  params = vgg.load_params(str(tmp_path / "vgg.npz"), width=WIDTH)
  images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, channels)).astype(np.float32)
  ours = vgg.features(params, jnp.asarray(images), batch_norm=batch_norm, width=WIDTH,
                      official=official)
  ref = _reference(state, images, batch_norm, train_mode=official)
  chex.assert_shape(ours, (3, vgg.num_features(32, width=WIDTH)))
  # Per-channel statistics are invariant to the NHWC vs NCHW flattening order.
  start = 0
  for r in ref:
    n = int(np.prod(r.shape[1:]))
    got = ours[:, start:start + n].reshape(3, r.shape[2], r.shape[3], r.shape[1])
    np.testing.assert_allclose(got, np.asarray(r).transpose(0, 2, 3, 1), rtol=2e-4, atol=2e-4)
    start += n
  assert start == ours.shape[1]


def test_official_features_depend_on_the_batch():
  """Batch-statistics BN: an image's features change with its batch-mates (official code);
  inference-mode BN: they do not."""
  params = vgg.init_params(jax.random.key(0), batch_norm=True, width=WIDTH)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1), minval=-1, maxval=1)
  for official, same in ((True, False), (False, True)):
    f = functools.partial(vgg.features, params, batch_norm=True, width=WIDTH, official=official)
    alone, in_batch = f(x[:2])[0], f(x)[0]
    assert bool(jnp.allclose(alone, in_batch, atol=1e-5)) == same


def test_layer_selection_and_feature_count():
  assert vgg.num_features(32) == 303_104          # the paper's 16 layers at 32x32
  params = vgg.init_params(jax.random.key(0), width=WIDTH)
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1)
  every = vgg.features(params, x, width=WIDTH)
  sizes = [math.prod(s) for s in vgg.layer_shapes(32, width=WIDTH)]
  assert every.shape == (2, sum(sizes))
  # "first" (official numLayersToFtrMatching): the leading maps in forward order; "last": the
  # trailing ones. Each is a slice of all 16 maps.
  first4 = vgg.features(params, x, num_layers=4, width=WIDTH)
  last4 = vgg.features(params, x, num_layers=4, layers="last", width=WIDTH)
  assert first4.shape == (2, vgg.num_features(32, 4, WIDTH)) == (2, sum(sizes[:4]))
  assert last4.shape == (2, vgg.num_features(32, 4, WIDTH, "last")) == (2, sum(sizes[-4:]))
  np.testing.assert_array_equal(first4, every[:, :sum(sizes[:4])])
  np.testing.assert_array_equal(last4, every[:, -sum(sizes[-4:]):])
  with pytest.raises(ValueError, match="num_layers"):
    vgg.features(params, x, num_layers=17, width=WIDTH)
  with pytest.raises(ValueError, match="layers"):
    vgg.features(params, x, num_layers=4, layers="middle", width=WIDTH)


def test_wrong_shape_names_the_layer(tmp_path):
  state = _random_state(False)
  state["features.5.weight"] = state["features.5.weight"][:, :1]
  np.savez(tmp_path / "bad.npz", **state)
  with pytest.raises(ValueError, match=r"layer 'features.5.weight' has shape"):
    vgg.load_params(str(tmp_path / "bad.npz"), width=WIDTH)
  del state["features.5.weight"]
  with pytest.raises(ValueError, match="missing 'features.5.weight'"):
    vgg.from_torch_state_dict(state, width=WIDTH)
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="unreadable"):
    vgg.load_params(str(tmp_path / "junk.npz"))


def test_official_fake_range_rescales_colour_fakes_only():
  """The official client's preprocess_fakeData: colour fakes to the ImageNet-normalised
  range, ((x + 1) * range) / 2 + min per channel; grey ones unchanged; reals untouched."""
  from prism_jax import features
  x = jax.random.uniform(jax.random.key(3), (2, 4, 4, 3), minval=-1, maxval=1)
  mean, std = np.array(vgg.IMAGENET_MEAN), np.array(vgg.IMAGENET_STD)
  lo, hi = -mean / std, (1 - mean) / std
  np.testing.assert_allclose(vgg.imagenet_range(x), ((np.asarray(x) + 1) * (hi - lo)) / 2 + lo,
                             rtol=1e-5, atol=1e-6)
  grey = x[..., :1]
  np.testing.assert_array_equal(vgg.imagenet_range(grey), grey)
  ex = features.vgg19("random", num_layers=2, width=WIDTH, official=True, batch_norm=True,
                      fake_range="imagenet")
  same = features.vgg19("random", num_layers=2, width=WIDTH, official=True, batch_norm=True)
  img = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3), minval=-1, maxval=1)
  np.testing.assert_array_equal(ex.apply(ex.params, img), same.apply(same.params, img))
  np.testing.assert_array_equal(ex.apply_fake(ex.params, img),
                                same.apply(same.params, vgg.imagenet_range(img)))
  with pytest.raises(ValueError, match="fake_range"):
    features.vgg19("random", fake_range="torch")


def test_padded_batch_with_valid_rows_equals_the_unpadded_batch():
  """Batch-statistics BN over the valid rows of a padded batch: the real rows' features are
  those of the unpadded batch (the statistics setup's one shape)."""
  params = vgg.init_params(jax.random.key(0), True, WIDTH)
  x = jax.random.uniform(jax.random.key(5), (5, 32, 32, 1), minval=-1, maxval=1)
  padded = jnp.concatenate([x, jnp.zeros((3, 32, 32, 1))])
  f = functools.partial(vgg.features, params, batch_norm=True, width=WIDTH, official=True)
  np.testing.assert_allclose(f(padded, valid=jnp.arange(8) < 5)[:5], f(x), rtol=1e-4,
                             atol=1e-5)
  assert not np.allclose(f(padded)[:5], f(x), atol=1e-3)   # unmasked padding shifts them
