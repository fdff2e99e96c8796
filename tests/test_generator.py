import functools
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prism_jax import generator, masking


def test_paper_generator_size():
  # The official 32x32 grey-image generator has 3,543,616 masked weights (nz 128, ngf 64).
  model = generator.ResNetGenerator(32, 1, 128, 64)
  shapes = jax.eval_shape(lambda: generator.init_weights(model, 0))
  assert masking.num_weights(shapes) == 3_543_616
  assert shapes["input"]["kernel"].shape == (4, 4, 128, 512)
  assert shapes["block2"]["conv2"]["kernel"].shape == (3, 3, 64, 64)


@pytest.mark.parametrize("size,channels", [(8, 1), (16, 3), (32, 1)])
def test_output_shape_and_range(size, channels):
  model = generator.ResNetGenerator(size, channels, nz=8, ngf=4)
  w = generator.init_weights(model, 0)
  s = generator.init_scores(jax.random.key(1), w)
  x = generator.generate(model, w, s, jax.random.normal(jax.random.key(2), (5, 8)),
                         jax.random.key(3))
  chex.assert_shape(x, (5, size, size, channels))
  assert jnp.all(jnp.abs(x) <= 1.0)
  chex.assert_tree_all_finite(x)


def test_weights_reproducible_from_seed_and_signed_constant(tiny_model):
  a, b = generator.init_weights(tiny_model, 7), generator.init_weights(tiny_model, 7)
  c = generator.init_weights(tiny_model, 8)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a["block0"]["conv1"]["kernel"], c["block0"]["conv1"]["kernel"])
  for path, leaf in jax.tree_util.tree_leaves_with_path(a):
    kh, kw, cin, cout = leaf.shape
    # The input ConvTranspose uses PyTorch's fan-in of its [in, out, k, k] weight: out * k * k.
    fan_in = kh * kw * (cout if path[0].key == "input" else cin)
    np.testing.assert_allclose(np.abs(leaf), np.sqrt(2.0 / fan_in), rtol=1e-6)
    assert 0.3 < np.mean(leaf > 0) < 0.7   # both signs present


def test_input_fan_matches_pytorch_convtranspose_fan_in():
  """The official scale at the paper size: sqrt(2 / (512 * 16)), half the nz-fan scale."""
  torch_fan = generator.init_weights(generator.ResNetGenerator(32, 1, 128, 64), 0)
  nz_fan = generator.init_weights(generator.ResNetGenerator(32, 1, 128, 64, input_fan="nz"), 0)
  np.testing.assert_allclose(np.abs(torch_fan["input"]["kernel"]), np.sqrt(2 / (512 * 4 * 4)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.abs(nz_fan["input"]["kernel"]), np.sqrt(2 / (128 * 4 * 4)),
                             rtol=1e-6)
  chex.assert_trees_all_equal(torch_fan["block0"], nz_fan["block0"])   # other layers as before


@pytest.mark.parametrize("ksize,cout", [(1, 6), (3, 6), (3, 1), (3, 3)])
def test_matmul_conv_equals_xla_conv(ksize, cout):
  """im2col (cout >= cin) and per-tap outputs summed shifted (cout < cin, the image layer):
  values and gradients, borders included (5x7)."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 5))
  k = jax.random.normal(jax.random.key(1), (ksize, ksize, 5, cout))
  w = jax.random.normal(jax.random.key(2), (2, 5, 7, cout))
  def out_and_grads(impl):
    conv = lambda x, k: generator.conv2d(x, k, impl)
    return conv(x, k), jax.grad(lambda x, k: jnp.sum(w * conv(x, k)), (0, 1))(x, k)
  chex.assert_trees_all_close(out_and_grads("matmul"), out_and_grads("xla"), atol=1e-5)


def test_subpixel_upsample_conv_equals_upsample_then_conv():
  """The four-phase 2x2 convolution at low resolution is the 3x3 convolution of the x2
  nearest-upsampled map, values and gradients (borders included: 5x7 keeps them apart)."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  up = jnp.repeat(jnp.repeat(x, 2, 1), 2, 2)
  ref = jax.lax.conv_general_dilated(up, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = generator.upsample_conv2d(x, k, "matmul")
  chex.assert_shape(out, (2, 10, 14, 4))
  chex.assert_trees_all_close(out, ref, atol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  grads = jax.grad(loss(lambda x, k: generator.upsample_conv2d(x, k, "matmul")), (0, 1))(x, k)
  ref_grads = jax.grad(loss(lambda x, k: generator.conv2d(generator.upsample2x(x), k, "xla")),
                       (0, 1))(x, k)
  chex.assert_trees_all_close(grads, ref_grads, atol=1e-4)
  with pytest.raises(ValueError, match="3x3"):
    generator.upsample_conv2d(x, k[:1, :1], "matmul")


def test_project_is_transposed_conv_on_1x1_input():
  z = jax.random.normal(jax.random.key(0), (3, 4))
  model = generator.Project(5, 4)
  params = model.init(jax.random.key(1), z)
  kernel = params["params"]["kernel"]
  out = model.apply(params, z)
  # PyTorch ConvTranspose2d on a 1x1 input: out[b, o, i, j] = sum_c z[b, c] W[c, o, i, j].
  ref = np.einsum("bc,coij->bijo", np.asarray(z), np.transpose(np.asarray(kernel), (2, 3, 0, 1)))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  chex.assert_shape(out, (3, 4, 4, 5))


def test_impls_give_same_images(tiny_model):
  w = generator.init_weights(tiny_model, 0)
  s = generator.init_scores(jax.random.key(1), w)
  z = jax.random.normal(jax.random.key(2), (4, 8))
  outs = [generator.generate(tiny_model.clone(conv_impl=impl), w, s, z, mode="threshold")
          for impl in ("xla", "matmul")]
  chex.assert_trees_all_close(*outs, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [(dict(image_size=24), "power of two"),
                                          (dict(image_size=4), "power of two"),
                                          (dict(channels=2), "channels"),
                                          (dict(input_fan="fan_out"), "input_fan")])
def test_bad_generator_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    generator.ResNetGenerator(**kwargs)


@pytest.mark.parametrize("shape", [(2, 32, 32, 8, 16), (3, 7, 5, 3, 4), (1, 1, 1, 16, 8),
                                   (2, 4, 9, 64, 2)])
def test_winograd_conv_equals_xla_values_and_gradients(shape):
  """F(2x2, 3x3) against XLA's convolution at odd and even sizes, borders included: float32
  agreement to 1e-5 relative (values and both gradients)."""
  b, h, w, cin, cout = shape
  x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
  ref, got = (functools.partial(generator.conv2d, impl=i) for i in ("xla", "winograd"))
  np.testing.assert_allclose(got(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(jax.random.key(2), (b, h, w, cout))
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)   # noqa: E731
  for a, e in zip(jax.grad(loss(got), (0, 1))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4 * float(jnp.abs(e).max()))


@pytest.mark.parametrize("impl", ["matmul", "xla"])
def test_bfloat16_matmuls_stay_close_to_float32_and_are_an_option(impl):
  """bf16 inputs with float32 sums: images and score gradients within bf16's rounding of the
  float32 ones (8 bits of mantissa), not equal to them; the default stays float32."""
  z = jax.random.normal(jax.random.key(1), (8, 16))
  f32 = generator.ResNetGenerator(16, 1, 16, 8, conv_impl=impl)
  bf16 = generator.ResNetGenerator(16, 1, 16, 8, conv_impl=impl, matmul_dtype="bfloat16")
  weights = generator.init_weights(f32, 0)
  scores = generator.init_scores(jax.random.key(2), weights)

  def loss(model, s):
    return jnp.mean(generator.generate(model, weights, s, z, jax.random.key(3), "sample") ** 2)
  (la, ga), (lb, gb) = (jax.value_and_grad(functools.partial(loss, m))(scores)
                        for m in (f32, bf16))
  assert abs(float(lb - la)) < 2e-2 * abs(float(la)) and float(lb) != float(la)
  flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
  err = jnp.linalg.norm(flat(gb) - flat(ga)) / jnp.linalg.norm(flat(ga))
  assert 0 < float(err) < 5e-2, float(err)
  assert generator.ResNetGenerator().matmul_dtype is None
  with pytest.raises(ValueError, match="matmul_dtype"):
    generator.ResNetGenerator(16, 1, 16, 8, matmul_dtype="float16")


# (size, in, out) of every 3x3 stride-1 convolution VGG19 and the paper generator run
# (32x32 images; the generator's second convolution per block), batch 2.
LAYER_SHAPES = sorted({(32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256),
                       (8, 256, 256), (4, 256, 512), (4, 512, 512), (2, 512, 512)})


@pytest.mark.parametrize("size,cin,cout", LAYER_SHAPES)
def test_cpu_convolution_equals_xla_at_every_layer_shape_used(size, cin, cout):
  """``impl="cpu"`` (Winograd from 128 input channels on 4x4 maps, else im2col) against XLA's
  convolution at each layer shape of the paper-size step: values to 1e-5 of their scale and
  both gradients to 1e-4 of theirs (float32; Winograd's transforms add a few roundings)."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
  g = jax.random.normal(jax.random.key(2), (2, size, size, cout))
  ref, got = (functools.partial(generator.conv2d, impl=i) for i in ("xla", "cpu"))
  scale = float(jnp.abs(ref(x, k)).max())
  np.testing.assert_allclose(got(x, k), ref(x, k), atol=1e-5 * scale)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)   # noqa: E731
  for a, e in zip(jax.grad(loss(got), (0, 1))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
    np.testing.assert_allclose(a, e, atol=1e-4 * float(jnp.abs(e).max()))


def test_cpu_convolution_picks_winograd_from_128_input_channels_and_4x4_maps():
  """The per-layer choice of ``impl="cpu"``: its compiled program has Winograd's 16 batched
  matmuls from 128 input channels on 4x4 maps or larger, one im2col matmul below, and
  im2col for bf16 inputs."""
  def batched_dots(cin, size=4, dtype=None):
    x, k = jnp.zeros((1, size, size, cin)), jnp.zeros((3, 3, cin, 8))
    text = jax.jit(lambda x, k: generator.conv2d(x, k, "cpu", dtype)).lower(x, k).as_text()
    return "dot_general" in text and "batching_dims = [0] x [0]" in text
  assert batched_dots(generator.WINOGRAD_MIN_CHANNELS)
  assert not batched_dots(generator.WINOGRAD_MIN_CHANNELS - 1)
  assert not batched_dots(generator.WINOGRAD_MIN_CHANNELS, generator.WINOGRAD_MIN_SIZE - 2)
  assert not batched_dots(generator.WINOGRAD_MIN_CHANNELS, dtype="bfloat16")


@pytest.mark.parametrize("dtype,tol", [(None, 1e-5), ("bfloat16", 2e-2)])
def test_tiled_im2col_convolution_equals_xla_under_vmap(dtype, tol, monkeypatch):
  """``impl="cpu"``'s batch-tiled im2col (columns over ``IM2COL_TILE_BYTES``; here 3 images'
  worth, so 6 images run as 2 tiles) vmapped over 2 clients with a kernel each, with a
  frozen kernel (no kernel gradient, as VGG19's) and in a shard_map with a kernel the
  clients share: values and both gradients equal XLA's convolution's (float32 to 1e-5 of
  their scale; bf16 inputs to bf16's rounding)."""
  monkeypatch.setattr(generator, "TILE_MIN_CHANNELS", 8)
  monkeypatch.setattr(generator, "TILE_MIN_SIZE", 5)
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 7, 8))
  k = jax.random.normal(jax.random.key(1), (2, 3, 3, 8, 8)) / np.sqrt(72)
  g = jax.random.normal(jax.random.key(2), (2, 6, 5, 7, 8))
  per_image = 5 * 7 * 9 * 8 * (4 if dtype is None else 2)
  assert generator.batch_tiles(6, per_image, 3 * per_image) == 2

  def loss(impl):
    one = lambda x, k, g: jnp.sum(generator.conv2d(x, k, impl, dtype) * g)  # noqa: E731
    return lambda x, k: jnp.sum(jax.vmap(one)(x, k, g))
  with mock.patch.object(generator, "IM2COL_TILE_BYTES", 3 * per_image):
    assert "while" not in jax.jit(lambda x, k: generator.conv2d(x[0], k[0], "cpu", dtype)).lower(
        x[:, :, :4], k).as_text()   # maps under TILE_MIN_SIZE: untiled
    text = jax.jit(jax.value_and_grad(loss("cpu"), (0, 1))).lower(x, k).as_text()
    got = jax.value_and_grad(loss("cpu"), (0, 1))(x, k)
    frozen = jax.grad(loss("cpu"))(x, k)
  assert text.count("stablehlo.while") == 2   # the forward's tiles and the backward's
  want = jax.value_and_grad(loss("xla"), (0, 1))(x, k)
  for a, e in zip(jax.tree.leaves(got) + [frozen], jax.tree.leaves(want) + [want[1][0]]):
    np.testing.assert_allclose(a, e, atol=tol * float(jnp.abs(e).max()))
  # In the round's shard_map, with a kernel all clients of the device share
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("clients",))
  def sharded(impl):
    one = lambda x, k, g: jnp.sum(generator.conv2d(x, k, impl, dtype) * g)  # noqa: E731
    grads = lambda x, k, g: jax.grad(  # noqa: E731
        lambda x, k: jnp.sum(jax.vmap(one, (0, None, 0))(x, k, g)), (0, 1))(x, k)
    return jax.shard_map(grads, mesh=mesh, in_specs=(P("clients"), P(), P("clients")),
                         out_specs=(P("clients"), P()))(x, k[0], g)
  with mock.patch.object(generator, "IM2COL_TILE_BYTES", 3 * per_image):
    got = sharded("cpu")
  for a, e in zip(got, sharded("xla")):
    np.testing.assert_allclose(a, e, atol=tol * float(jnp.abs(e).max()))
  assert generator.batch_tiles(64, 2 ** 20, 8 * 2 ** 20) == 8
  assert generator.batch_tiles(6, 100, 10) == 6   # one image per tile at the least
  assert generator.batch_tiles(64, 100) == 1


def test_cpu_clients_convolution_gradients_equal_xla_under_vmap():
  """``impl="cpu_clients"`` (kernel gradient as ``(g^T a)^T``) vmapped over 3 clients with
  a kernel each, and with a kernel all clients share (its gradient summed over them):
  values and gradients equal XLA's convolution's."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 5, 8))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 8, 4)) / np.sqrt(72)
  g = jax.random.normal(jax.random.key(2), (3, 2, 6, 5, 4))

  def loss(impl, up=False):
    conv = generator.upsample_conv2d if up else generator.conv2d
    def one(x, k, g):
      return jnp.sum(conv(x, k, impl) * (g if not up else jnp.tile(g, (1, 2, 2, 1))))
    return lambda x, k, axes: jnp.sum(jax.vmap(one, in_axes=(0, axes, 0))(x, k, g))
  for up in (False, True):
    for kernel, axes in ((k, 0), (k[0], None)):
      got, want = (jax.grad(loss(i, up), (0, 1))(x, kernel, axes)
                   for i in ("cpu_clients", "xla"))
      chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)
  assert generator.conv_auto_impl(2) == "cpu_clients" and generator.conv_auto_impl() == "cpu"
