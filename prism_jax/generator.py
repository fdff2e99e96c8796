"""The PRISM generator: a ResNet generator whose conv weights are frozen and masked.

Architecture (official PRISM code, 32x32 default): z ~ N(0, I_nz) -> ConvTranspose 4x4
(nz -> C0, 1x1 -> 4x4) -> log2(image_size) - 2 upsampling residual blocks -> BN -> ReLU ->
Conv3x3 -> tanh. Widths "adapt": the last block has ``ngf`` channels, each earlier block
doubles, so C0 = ngf * 2^(blocks). No biases; BatchNorm uses batch statistics and has no
trained affine parameters (the official code never trains them, so they stay at 1 / 0).

The Flax module is an ordinary network; masking happens outside it, on its ``params``:
``frozen weights * mask(scores)`` are passed in as ``params`` (see :func:`generate`). The
frozen weights are a pure function of a seed (:func:`init_weights`) and are never trained,
checkpointed or sent; only the scores (same PyTree structure) are.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from prism_jax import masking
from prism_jax.data import check_image_size


def signed_constant(key, shape, dtype=jnp.float32, fan_in: int | None = None):
  """Signed-constant init: ``sign(w0) * sqrt(2 / fan_in)`` (Kaiming gain for ReLU).

  ``fan_in`` defaults to the product of all kernel dims but the last (Flax layout ``(kh,
  kw, in, out)``), as ``flax.linen.initializers.variance_scaling`` computes it.
  """
  fan_in = math.prod(shape[:-1]) if fan_in is None else fan_in
  return jax.random.rademacher(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)


def batch_norm(x: jax.Array, eps: float = 1e-5, valid: jax.Array | None = None) -> jax.Array:
  """BatchNorm in training mode without affine: normalise over batch and space.

  ``valid`` (bool ``[batch]``): the statistics over those rows only, so that a batch padded
  to a fixed size normalises its real rows as the unpadded batch would."""
  if valid is None:
    mean = jnp.mean(x, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(x, axis=(0, 1, 2), keepdims=True)
  else:
    w = valid.astype(x.dtype).reshape(-1, 1, 1, 1)
    n = jnp.sum(w) * x.shape[1] * x.shape[2]
    mean = jnp.sum(w * x, axis=(0, 1, 2), keepdims=True) / n
    var = jnp.sum(w * jnp.square(x - mean), axis=(0, 1, 2), keepdims=True) / n
  return (x - mean) * jax.lax.rsqrt(var + eps)


def upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of an NHWC tensor."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def conv_auto_impl(clients: int = 1) -> str:
  """``"cpu"`` on CPU (``"cpu_clients"`` for kernels vmapped over ``clients`` > 1 per
  device), ``"xla"`` elsewhere.

  XLA:CPU runs convolutions whose kernel is batched (``vmap`` over clients with per-client
  masks) or that sit inside a ``lax.scan`` 5-50x slower than straight-line code; im2col
  and Winograd convolutions (slices, elementwise sums and matmuls) have neither problem.
  GPUs and TPUs run the native convolution well in both cases.
  """
  if jax.default_backend() != "cpu":
    return "xla"
  return "cpu_clients" if clients > 1 else "cpu"


CONV_IMPLS = ("xla", "matmul", "winograd", "cpu", "cpu_clients")
# "cpu": Winograd for 3x3 convolutions with at least this many input channels on maps of
# at least this size (float32), im2col for the rest: the faster of the two per layer on a
# 2-core CPU, forward and both gradients (python -m benchmarks.conv_layers;
# docs/performance.md).
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_SIZE = 4
# "cpu": an im2col convolution with at least TILE_MIN_CHANNELS inputs on maps of at least
# TILE_MIN_SIZE whose columns (one client's batch) take more than IM2COL_TILE_BYTES runs over
# batch tiles of at most that size (:func:`tiled_im2col_conv`), so that each tile's columns
# stay in the two cores' caches instead of streaming through memory: 3-5% of the paper-size
# step; the default run, whose narrower layers run vmapped over 2 clients, took 10% longer
# a round with them tiled (python -m benchmarks.conv_layers; docs/performance.md).
IM2COL_TILE_BYTES = 8 * 2 ** 20
TILE_MIN_CHANNELS = 64
TILE_MIN_SIZE = 16

# Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, CVPR 2016): Y = A^T [(G g G^T) *
# (B^T d B)] A for a 4x4 input tile d and a 3x3 filter g gives a 2x2 output tile of the
# correlation with 16 instead of 36 multiplications per channel pair. B^T, G and A^T are
# applied as the sums they are (one axis at a time), so XLA fuses each transform into one
# elementwise pass instead of running them as tiny matmuls.
def _wino_bt(d):   # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _wino_g(g):    # G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
  return [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]]


def _wino_at(m):   # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 'SAME' 3x3 convolution of NHWC ``x`` with an HWIO ``kernel`` by Winograd's
  F(2x2, 3x3): the kernel and the overlapping 4x4 input tiles (stride 2) are transformed,
  multiplied as 16 batched matmuls over the channels (``[16, tiles, in] @ [16, in, out]``),
  and transformed back into 2x2 output tiles (odd sizes: the map is padded to even and
  cropped). The same function as :func:`conv2d`, up to float rounding; its gradient (by
  ``jax.grad``) has the same form: transposed transforms around 16 batched matmuls."""
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"winograd_conv3x3 needs a 3x3 kernel, got {kernel.shape[:2]}")
  b, h, w, cin = x.shape
  th, tw = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  rows = _wino_bt([xp[:, i:i + 2 * th:2] for i in range(4)])        # 4 x [b, th, W + 2, in]
  v = jnp.stack([t for r in rows for t in _wino_bt([r[:, :, j:j + 2 * tw:2] for j in range(4)])])
  k = kernel.astype(x.dtype)
  u = jnp.stack([t for r in _wino_g([k[i] for i in range(3)])
                 for t in _wino_g([r[j] for j in range(3)])])        # [16, in, out]
  m = (v.reshape(16, b * th * tw, cin) @ u).reshape(4, 4, b, th, tw, -1)
  y = jnp.stack([jnp.stack(_wino_at([r[c] for c in range(4)]), 3)
                 for r in _wino_at([m[a] for a in range(4)])], 2)    # [b, th, 2, tw, 2, out]
  return y.reshape(b, 2 * th, 2 * tw, -1)[:, :h, :w]


MATMUL_DTYPES = (None, "bfloat16")


@jax.custom_vjp
def _matmul_clients(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b`` (``[M, K] @ [K, N]``) whose kernel gradient ``a^T g`` is computed as
  ``(g^T a)^T``. Vmapped over clients (one kernel each), that is a batched matmul in the
  standard layout, which XLA:CPU hands to its matmul library; ``a^T g`` (both operands
  contracted over their rows) falls back to a slower loop there: 13% of the default run's
  local step. Unbatched, XLA's own form is 3-7% faster, hence ``conv_impl="cpu_clients"``
  only where a device runs several clients."""
  return a @ b


def _matmul_clients_fwd(a, b):
  return a @ b, (a, b)


def _matmul_clients_bwd(res, g):
  a, b = res
  return _like(g @ b.T, a), _like((g.T @ a).T, b)


_matmul_clients.defvjp(_matmul_clients_fwd, _matmul_clients_bwd)


def _like(cotangent, primal):
  """The cotangent summed over the mapped (``shard_map``) axes its primal does not vary
  over, such as a kernel all clients share (what JAX does for a plain product)."""
  extra = tuple(_varying(cotangent) - _varying(primal))
  return jax.lax.psum(cotangent, extra) if extra else cotangent


def _varying(x) -> frozenset:
  """The manual (``shard_map``) mesh axes ``x`` varies over."""
  return jax.typeof(x).manual_axis_type.varying


def matmul(a: jax.Array, b: jax.Array, dtype: str | None = None,
           clients: bool = False) -> jax.Array:
  """``a @ b``; with ``dtype="bfloat16"`` the inputs are rounded to bfloat16 and the products
  accumulated in float32 (CPUs with bf16 instructions and accelerators run it faster; it
  changes the results, so it is an option, never the CPU default). ``clients``: ``b`` is
  a kernel vmapped over several clients (:func:`_matmul_clients`)."""
  if dtype is None:
    if clients and a.ndim >= b.ndim == 2:
      return _matmul_clients(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], -1)
    return a @ b
  if dtype not in MATMUL_DTYPES:
    raise ValueError(f"matmul dtype must be one of {MATMUL_DTYPES}, got {dtype!r}")
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def conv2d(x: jax.Array, kernel: jax.Array, impl: str = "xla",
           dtype: str | None = None) -> jax.Array:
  """Stride-1 'SAME' convolution of NHWC ``x`` with an HWIO ``kernel`` (odd sizes).

  ``impl``: XLA's convolution, an im2col ``"matmul"``, ``"winograd"`` (3x3 kernels by
  :func:`winograd_conv3x3`; other sizes as ``"matmul"``), or ``"cpu"``: Winograd for 3x3
  kernels with ``WINOGRAD_MIN_CHANNELS`` inputs or more on maps of ``WINOGRAD_MIN_SIZE`` or
  more in float32, im2col otherwise (in batch tiles for wide layers on large maps,
  :func:`tiled_im2col_conv`); ``"cpu_clients"`` the same for kernels vmapped over
  several clients on a device (the kernel gradient's layout, :func:`_matmul_clients`).
  ``dtype``: the matmuls' input precision (:func:`matmul`)."""
  clients, tiled = impl == "cpu_clients", impl in ("cpu", "cpu_clients")
  if tiled:
    impl = ("winograd" if kernel.shape[:2] == (3, 3) and dtype is None
            and kernel.shape[2] >= WINOGRAD_MIN_CHANNELS
            and min(x.shape[1:3]) >= WINOGRAD_MIN_SIZE else "matmul")
  if impl == "xla":
    if dtype is not None:
      return jax.lax.conv_general_dilated(
          x.astype(dtype), kernel.astype(dtype), (1, 1), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl == "winograd" and dtype is not None:
    raise ValueError("conv_impl 'winograd' runs in float32 only")
  if impl == "winograd" and kernel.shape[:2] == (3, 3):
    return winograd_conv3x3(x, kernel)
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; choose one of {CONV_IMPLS}")
  kh, kw, cin, cout = kernel.shape
  h, w = x.shape[1:3]
  if cout < cin:   # few outputs (the image layer): every tap's output first, then shifted
    # sums; im2col's backward would be an outer product XLA fuses with, and recomputes, its
    # producers
    taps = matmul(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout), dtype,
                  clients)
    tp = _pad_same(taps, kh, kw)
    return sum(tp[:, i:i + h, j:j + w, (i * kw + j) * cout:(i * kw + j + 1) * cout]
               for i in range(kh) for j in range(kw))
  if tiled and cin >= TILE_MIN_CHANNELS and min(h, w) >= TILE_MIN_SIZE:
    tiles = batch_tiles(x.shape[0], column_bytes(x.shape, kernel.shape, dtype))
    if tiles > 1:
      return tiled_im2col_conv(x, kernel, tiles, dtype)
  return matmul(_im2col(x, kh, kw), kernel.reshape(kh * kw * cin, cout), dtype, clients)


def _pad_same(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """NHWC ``x`` zero-padded for a stride-1 'SAME' ``kh x kw`` convolution (odd sizes)."""
  return jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def _im2col(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """``[b, h, w, kh * kw * c]``: each pixel's 'SAME'-padded ``kh x kw`` neighbourhood."""
  h, w = x.shape[1:3]
  xp = _pad_same(x, kh, kw)
  return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], -1)


def column_bytes(x_shape, kernel_shape, dtype: str | None = None) -> int:
  """Bytes of one image's im2col columns (float32, or bf16 with ``dtype="bfloat16"``)."""
  (_, h, w, _), (kh, kw, cin, _) = x_shape, kernel_shape
  return h * w * kh * kw * cin * (4 if dtype is None else 2)


def batch_tiles(batch: int, bytes_per_image: int, tile_bytes: int | None = None) -> int:
  """The fewest batch tiles, a divisor of ``batch``, whose im2col columns take at most
  ``tile_bytes`` (default ``IM2COL_TILE_BYTES``) each, or one image per tile."""
  tile_bytes = IM2COL_TILE_BYTES if tile_bytes is None else tile_bytes
  tiles = min(batch, -(-batch * bytes_per_image // tile_bytes))
  while batch % tiles:
    tiles += 1
  return tiles


def _split(x: jax.Array, tiles: int) -> jax.Array:
  return x.reshape(tiles, x.shape[0] // tiles, *x.shape[1:])


def _rounded(x: jax.Array, dtype: str | None) -> jax.Array:
  """``x`` in the matmuls' input precision (rounding before im2col: 9x fewer values)."""
  return x if dtype is None else x.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def tiled_im2col_conv(x: jax.Array, kernel: jax.Array, tiles: int,
                      dtype: str | None = None) -> jax.Array:
  """:func:`conv2d`'s im2col convolution (``kernel`` with ``out >= in``) computed over
  ``tiles`` batch tiles, the same function. Each tile builds its columns and multiplies them
  at once, so they stay in cache: the whole batch's columns (151 MB for VGG19's 32x32x64
  layer at batch 64) would be written to memory and read back, which on CPU costs more than
  the matmul. The backward (a ``custom_vjp``) runs over the same tiles in one loop, rebuilding
  each tile's columns: the input gradient is the im2col convolution of the output gradient
  with the flipped, transposed kernel; the kernel gradient ``g^T cols`` is summed over the
  tiles (and dropped by the compiler where the kernel is not differentiated, as VGG19's).
  ``dtype="bfloat16"``: the tiles are rounded before their columns are built."""
  kh, kw, cin, cout = kernel.shape
  k2 = kernel.reshape(kh * kw * cin, cout)
  y = jax.lax.map(lambda xt: matmul(_im2col(_rounded(xt, dtype), kh, kw), k2, dtype),
                  _split(x, tiles))
  return y.reshape(*x.shape[:3], cout)


def _tiled_fwd(x, kernel, tiles, dtype):
  return tiled_im2col_conv(x, kernel, tiles, dtype), (x, kernel)


def _tiled_bwd(tiles, dtype, res, g):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)

  def tile(dk, xg):
    xt, gt = xg
    cols = _im2col(_rounded(xt, dtype), kh, kw).reshape(-1, kh * kw * cin)
    return dk + matmul(gt.reshape(-1, cout).T, cols, dtype), matmul(
        _im2col(_rounded(gt, dtype), kh, kw), flipped, dtype)

  dk = jnp.zeros((cout, kh * kw * cin), jnp.float32)
  axes = (_varying(x) | _varying(g) | _varying(kernel)) - _varying(dk)
  dk = jax.lax.pcast(dk, tuple(axes), to="varying") if axes else dk   # as its terms vary
  dk, dx = jax.lax.scan(tile, dk, (_split(x, tiles), _split(g, tiles)))
  return (dx.reshape(x.shape).astype(x.dtype),
          _like(dk.T.reshape(kernel.shape).astype(kernel.dtype), kernel))


tiled_im2col_conv.defvjp(_tiled_fwd, _tiled_bwd)


# _PHASE_TAPS[a, o, d] = 1 where tap d of a 3-tap filter on the x2 nearest-upsampled rows
# lands on low-resolution offset a - 1 + o, for output rows of parity a.
_PHASE_TAPS = ((((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))))


def upsample_conv2d(x: jax.Array, kernel: jax.Array, impl: str = "xla",
                    dtype: str | None = None) -> jax.Array:
  """``conv2d(upsample2x(x), kernel)`` for a 3x3 ``kernel``, the same function.

  With ``impl`` ``"matmul"``, ``"winograd"``, ``"cpu"`` or ``"cpu_clients"`` it is computed
  at the low resolution: each of the four output phases (row and column parity) of a 3x3
  conv over a nearest-upsampled map is a 2x2 conv of the input whose taps are sums of the
  3x3 kernel's (sub-pixel convolution), 16 instead of 36 multiply-adds per input pixel and
  channel pair and a quarter of the im2col memory; on CPU it halves the time of the
  generator's upsampling convolutions. It already multiplies as little per output as
  F(2x2, 3x3) would, so Winograd is not applied on top.
  """
  if impl not in ("matmul", "winograd", "cpu", "cpu_clients"):
    return conv2d(upsample2x(x), kernel, impl, dtype)
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"upsample_conv2d needs a 3x3 kernel, got {kernel.shape[:2]}")
  b, h, w, cin = x.shape
  taps = lambda k, a, i: sum(k[d] for d in range(3) if _PHASE_TAPS[a][i][d])  # noqa: E731
  rows = [[taps(kernel, a, i) for i in range(2)] for a in range(2)]    # [a][i]: [3, in, out]
  xp = _pad_same(x, 3, 3)

  def phase(a, c):   # a 2x2 convolution: taps (i, j), kernels summed from the 3x3 one's
    cols = jnp.concatenate([xp[:, a + i:a + i + h, c + j:c + j + w]
                            for i in range(2) for j in range(2)], -1)
    k = jnp.concatenate([taps(rows[a][i], c, j) for i in range(2) for j in range(2)])
    return matmul(cols, k, dtype, impl == "cpu_clients")

  y = jnp.stack([jnp.stack([phase(a, c) for c in range(2)], 3) for a in range(2)], 2)
  return y.reshape(b, 2 * h, 2 * w, y.shape[-1])   # [b, h, 2, w, 2, out] interleaved


class Conv(nn.Module):
  """Bias-free stride-1 'SAME' conv with a signed-constant kernel ``(k, k, in, out)``, of
  the input or (``upsample``) of its x2 nearest-neighbour upsampling."""
  features: int
  kernel_size: int
  impl: str = "xla"
  upsample: bool = False
  dtype: str | None = None   # matmul input precision (matmul)

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", signed_constant,
                        (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    if self.upsample:
      return upsample_conv2d(x, kernel, self.impl, self.dtype)
    return conv2d(x, kernel, self.impl, self.dtype)


INPUT_FANS = ("torch", "nz")


class Project(nn.Module):
  """The input layer: ConvTranspose k x k, stride 1, no padding, on a 1x1 input.

  On a 1x1 input this is ``out[b, i, j, o] = sum_c z[b, c] K[i, j, c, o]`` (PyTorch's
  ConvTranspose2d, kernel ``(k, k, nz, out)``), computed as one matmul. ``fan``: the
  signed-constant scale's fan-in, ``"torch"`` = ``out * k * k`` as PyTorch computes it for a
  ConvTranspose2d weight ``[in, out, k, k]`` (official code), ``"nz"`` = ``nz * k * k``, the
  true fan-in (a 2x larger scale at the paper size). Only the skip path of the first block
  sees this scale; everything else is batch-normalised.
  """
  features: int
  kernel_size: int = 4
  fan: str = "torch"

  @nn.compact
  def __call__(self, z):
    k = self.kernel_size
    fan = k * k * (self.features if self.fan == "torch" else z.shape[-1])
    kernel = self.param("kernel", functools.partial(signed_constant, fan_in=fan),
                        (k, k, z.shape[-1], self.features))
    return jnp.einsum("bc,ijco->bijo", z, kernel)


class UpBlock(nn.Module):
  """BN -> ReLU -> up x2 -> Conv3x3 -> BN -> ReLU -> Conv3x3, plus (1x1 conv ->) up x2 skip."""
  features: int
  impl: str = "xla"
  dtype: str | None = None

  @nn.compact
  def __call__(self, x):
    h = Conv(self.features, 3, self.impl, upsample=True, dtype=self.dtype, name="conv1")(
        jax.nn.relu(batch_norm(x)))
    h = Conv(self.features, 3, self.impl, dtype=self.dtype, name="conv2")(
        jax.nn.relu(batch_norm(h)))
    skip = x
    if x.shape[-1] != self.features:
      skip = Conv(self.features, 1, self.impl, dtype=self.dtype, name="shortcut")(x)
    return h + upsample2x(skip)


class ResNetGenerator(nn.Module):
  """Maps ``z: [batch, nz]`` to images ``[batch, image_size, image_size, channels]`` in [-1, 1]."""
  image_size: int = 32
  channels: int = 1
  nz: int = 128
  ngf: int = 64
  conv_impl: str | None = None   # CONV_IMPLS; None: conv_auto_impl() (compute only)
  input_fan: str = "torch"       # first layer's init fan-in (Project): "torch" | "nz"
  matmul_dtype: str | None = None   # None: float32; "bfloat16": bf16 inputs, f32 sums

  @property
  def num_blocks(self) -> int:
    return int(math.log2(self.image_size)) - 2

  def __post_init__(self):
    check_image_size(self.image_size)
    if self.channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {self.channels}")
    if self.input_fan not in INPUT_FANS:
      raise ValueError(f"input_fan must be one of {INPUT_FANS}, got {self.input_fan!r}")
    if self.matmul_dtype not in MATMUL_DTYPES:
      raise ValueError(f"matmul_dtype must be one of {MATMUL_DTYPES}, got "
                       f"{self.matmul_dtype!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, z):
    widths = [self.ngf * 2 ** (self.num_blocks - 1 - i) for i in range(self.num_blocks)]
    impl = self.conv_impl or conv_auto_impl()
    x = Project(2 * widths[0], 4, self.input_fan, name="input")(z)
    for i, w in enumerate(widths):
      x = UpBlock(w, impl, self.matmul_dtype, name=f"block{i}")(x)
    x = Conv(self.channels, 3, impl, dtype=self.matmul_dtype, name="output")(
        jax.nn.relu(batch_norm(x)))
    return jnp.tanh(x)


def init_weights(model: ResNetGenerator, seed: int):
  """The frozen random weights: a pure function of ``seed`` (never trained nor sent)."""
  z = jnp.zeros((1, model.nz), jnp.float32)
  # One compiled program instead of one per initializer op when called eagerly.
  return jax.jit(model.init)(jax.random.key(seed), z)["params"]


def layer_order(weights) -> list[tuple[str, ...]]:
  """Paths of the masked layers' kernels in forward order: input, each block's conv1,
  conv2, shortcut, then output (the order PRISM-alpha's "last layers" refers to)."""
  def rank(path):
    if path[0] == "input":
      return (0,)
    if path[0] == "output":
      return (2,)
    return (1, int(path[0][len("block"):]), ("conv1", "conv2", "shortcut").index(path[1]))
  paths = [tuple(k.key for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(weights)]
  return sorted(paths, key=rank)


def state_dict_copies(tree):
  """How often each layer appears in the official ``ResnetG``'s state dict: twice for a
  residual block's convolutions (registered as ``conv1`` and ``model.3``, ``conv2`` and
  ``model.6``, ``conv_bypass`` and ``bypass.0``), once for the input and output layers."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: 2 if p[0].key.startswith("block") else 1, tree)


def prob_layers(weights, alpha: float):
  """PRISM-alpha (Algorithm 2): a PyTree of Python bools, True for the last
  ``int(alpha * num_layers)`` layers in forward order, which upload probabilities."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
  order = layer_order(weights)
  chosen = set(order[len(order) - int(alpha * len(order)):]) if alpha > 0 else set()
  return jax.tree_util.tree_map_with_path(lambda p, _: tuple(k.key for k in p) in chosen,
                                          weights)


def init_scores(key: jax.Array, weights, std: float = 1.0):
  """Scores ~ N(0, std^2), one per frozen weight (official default std = 1)."""
  @jax.jit
  def draw(key):
    return jax.tree.map(lambda k, w: std * jax.random.normal(k, w.shape, w.dtype),
                        masking.leaf_keys(key, weights), weights)
  return draw(key)


def generate(model: ResNetGenerator, weights, scores, z, key=None, mode="sample",
             estimator="prob", given=None):
  """Images from the masked generator: ``model(W_init * mask(scores), z)`` (``given``:
  binary masks to replay instead of drawing, :func:`prism_jax.masking.masks`)."""
  mask_tree = masking.masks(scores, key, mode, estimator, given)
  return model.apply({"params": masking.apply_masks(weights, mask_tree)}, z)


def apply_binary(model: ResNetGenerator, weights, binary_masks, z):
  """Images from a fixed binary mask (the exported model)."""
  return model.apply({"params": masking.apply_masks(weights, binary_masks)}, z)
