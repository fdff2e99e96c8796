"""InceptionV3 embeddings for FID / IS, as a pure JAX function over a weights file.

Architecture and parameter names follow torchvision's ``inception_v3`` (and pytorch-fid's
``pt_inception-2015-12-05`` weights, which share the names; ``fid_variant=True`` applies
pytorch-fid's pooling changes: average pools exclude padding, the last block max-pools).
Images in [-1, 1] are resized to 299x299 (bilinear); grey is repeated to RGB.
``apply(params, images) -> (pool3 [N, 2048], logits [N, classes])``.

Weights: ``np.savez("inception.npz", **{k: v.numpy() for k, v in state_dict.items()})`` from
``torchvision.models.inception_v3(weights="IMAGENET1K_V1")`` or pytorch-fid's
``FID_WEIGHTS_URL`` state dict. No download happens here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-3

# (name, in, out, kernel, stride, padding) of the stem.
STEM = (("Conv2d_1a_3x3", 3, 32, (3, 3), 2, (0, 0)), ("Conv2d_2a_3x3", 32, 32, (3, 3), 1, (0, 0)),
        ("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1)), "pool",
        ("Conv2d_3b_1x1", 64, 80, (1, 1), 1, (0, 0)), ("Conv2d_4a_3x3", 80, 192, (3, 3), 1, (0, 0)),
        "pool")


def _convs_a(cin, pool):
  return [("branch1x1", cin, 64, (1, 1)), ("branch5x5_1", cin, 48, (1, 1)),
          ("branch5x5_2", 48, 64, (5, 5)), ("branch3x3dbl_1", cin, 64, (1, 1)),
          ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3)),
          ("branch_pool", cin, pool, (1, 1))]


def _convs_b(cin):
  return [("branch3x3", cin, 384, (3, 3)), ("branch3x3dbl_1", cin, 64, (1, 1)),
          ("branch3x3dbl_2", 64, 96, (3, 3)), ("branch3x3dbl_3", 96, 96, (3, 3))]


def _convs_c(cin, c7):
  return [("branch1x1", cin, 192, (1, 1)), ("branch7x7_1", cin, c7, (1, 1)),
          ("branch7x7_2", c7, c7, (1, 7)), ("branch7x7_3", c7, 192, (7, 1)),
          ("branch7x7dbl_1", cin, c7, (1, 1)), ("branch7x7dbl_2", c7, c7, (7, 1)),
          ("branch7x7dbl_3", c7, c7, (1, 7)), ("branch7x7dbl_4", c7, c7, (7, 1)),
          ("branch7x7dbl_5", c7, 192, (1, 7)), ("branch_pool", cin, 192, (1, 1))]


def _convs_d(cin):
  return [("branch3x3_1", cin, 192, (1, 1)), ("branch3x3_2", 192, 320, (3, 3)),
          ("branch7x7x3_1", cin, 192, (1, 1)), ("branch7x7x3_2", 192, 192, (1, 7)),
          ("branch7x7x3_3", 192, 192, (7, 1)), ("branch7x7x3_4", 192, 192, (3, 3))]


def _convs_e(cin):
  return [("branch1x1", cin, 320, (1, 1)), ("branch3x3_1", cin, 384, (1, 1)),
          ("branch3x3_2a", 384, 384, (1, 3)), ("branch3x3_2b", 384, 384, (3, 1)),
          ("branch3x3dbl_1", cin, 448, (1, 1)), ("branch3x3dbl_2", 448, 384, (3, 3)),
          ("branch3x3dbl_3a", 384, 384, (1, 3)), ("branch3x3dbl_3b", 384, 384, (3, 1)),
          ("branch_pool", cin, 192, (1, 1))]


BLOCKS = (("Mixed_5b", "A", _convs_a(192, 32)), ("Mixed_5c", "A", _convs_a(256, 64)),
          ("Mixed_5d", "A", _convs_a(288, 64)), ("Mixed_6a", "B", _convs_b(288)),
          ("Mixed_6b", "C", _convs_c(768, 128)), ("Mixed_6c", "C", _convs_c(768, 160)),
          ("Mixed_6d", "C", _convs_c(768, 160)), ("Mixed_6e", "C", _convs_c(768, 192)),
          ("Mixed_7a", "D", _convs_d(768)), ("Mixed_7b", "E", _convs_e(1280)),
          ("Mixed_7c", "E", _convs_e(2048)))


def layout(num_classes: int = 1008) -> dict[str, tuple[int, ...]]:
  """Expected state-dict keys and shapes (torch OIHW layout)."""
  convs = [(n, i, o, k) for n, i, o, k, *_ in (s for s in STEM if s != "pool")]
  convs += [(f"{b}.{n}", i, o, k) for b, _, cs in BLOCKS for n, i, o, k in cs]
  shapes = {}
  for name, cin, cout, (kh, kw) in convs:
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for k in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{k}"] = (cout,)
  shapes["fc.weight"] = (num_classes, 2048)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def load_params(path: str) -> dict:
  """Weights from an ``.npz`` state dict; a missing key or wrong shape names the layer."""
  try:
    with np.load(path) as f:
      state = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"InceptionV3 weights file {path} is unreadable ({e})") from e
  num_classes = np.shape(state.get("fc.weight", np.zeros((1008, 2048))))[0]
  params = {}
  for key, shape in layout(num_classes).items():
    if key not in state:
      raise ValueError(f"InceptionV3 weights: missing {key!r}")
    if tuple(np.shape(state[key])) != shape:
      raise ValueError(f"InceptionV3 weights: layer {key!r} has shape "
                       f"{tuple(np.shape(state[key]))}, expected {shape}")
    value = np.asarray(state[key], np.float32)
    params[key] = jnp.asarray(value.transpose(2, 3, 1, 0) if len(shape) == 4 else value)
  return params


def _conv(p, name, x, stride=1, padding=None):
  w = p[f"{name}.conv.weight"]
  kh, kw = w.shape[:2]
  pad = padding if padding is not None else (kh // 2, kw // 2)
  x = jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad[0], pad[0]), (pad[1], pad[1])),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  scale = p[f"{name}.bn.weight"] * jax.lax.rsqrt(p[f"{name}.bn.running_var"] + BN_EPS)
  return jax.nn.relu((x - p[f"{name}.bn.running_mean"]) * scale + p[f"{name}.bn.bias"])


def _max_pool(x, k=3, s=2, pad=0):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool(x, exclude_pad: bool):
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  if not exclude_pad:
    return total / 9.0
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


def _block(p, name, kind, x, fid_variant, last):
  c = functools.partial(lambda n, y, **kw: _conv(p, f"{name}.{n}", y, **kw))
  if kind == "A":
    pool = c("branch_pool", _avg_pool(x, fid_variant))
    return [c("branch1x1", x), c("branch5x5_2", c("branch5x5_1", x)),
            c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x))), pool]
  if kind == "B":
    return [c("branch3x3", x, stride=2, padding=(0, 0)),
            c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)), stride=2,
              padding=(0, 0)), _max_pool(x)]
  if kind == "C":
    b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
    d = x
    for i in range(1, 6):
      d = c(f"branch7x7dbl_{i}", d)
    return [c("branch1x1", x), b7, d, c("branch_pool", _avg_pool(x, fid_variant))]
  if kind == "D":
    b3 = c("branch3x3_2", c("branch3x3_1", x), stride=2, padding=(0, 0))
    b7 = c("branch7x7x3_3", c("branch7x7x3_2", c("branch7x7x3_1", x)))
    return [b3, c("branch7x7x3_4", b7, stride=2, padding=(0, 0)), _max_pool(x)]
  b3 = c("branch3x3_1", x)
  d = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
  pooled = _max_pool(x, 3, 1, 1) if (fid_variant and last) else _avg_pool(x, fid_variant)
  return [c("branch1x1", x), c("branch3x3_2a", b3), c("branch3x3_2b", b3),
          c("branch3x3dbl_3a", d), c("branch3x3dbl_3b", d), c("branch_pool", pooled)]


def apply(params, images: jax.Array, fid_variant: bool = True, size: int = 299):
  """``images`` [N, H, W, 1|3] in [-1, 1] -> (pool3 features [N, 2048], logits)."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  x = jax.image.resize(images, (images.shape[0], size, size, 3), "bilinear")
  for layer in STEM:
    if layer == "pool":
      x = _max_pool(x)
    else:
      name, _, _, _, stride, pad = layer
      x = _conv(params, name, x, stride, pad)
  for i, (name, kind, _) in enumerate(BLOCKS):
    x = jnp.concatenate(_block(params, name, kind, x, fid_variant, i == len(BLOCKS) - 1), -1)
  pool3 = jnp.mean(x, axis=(1, 2))
  return pool3, pool3 @ params["fc.weight"].T + params["fc.bias"]
