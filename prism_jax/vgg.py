"""VGG19 feature extractor psi (paper Sec. 3: an ImageNet-pretrained VGG19, frozen).

``features(params, images)`` maps images in [-1, 1] (grey ones repeated to RGB) to the
flattened, concatenated ReLU outputs of ``num_layers`` of VGG19's 16 conv layers (all 16 by
default: 303,104 features per 32x32 image): the first ones in forward order, as the official
code's ``numLayersToFtrMatching`` selects them (``layers="first"``), or the last ones.

Two ways of running it (both from the same weights file):
  * ``official=True``, as the official PRISM code runs it: ``vgg19_bn`` is never put in eval
    mode, so its batch norms normalise with the statistics of the current batch (biased
    variance, as PyTorch's training-mode BN), and images go in as [-1, 1] without ImageNet
    normalisation. Features then depend on the batch they are computed in.
  * ``official=False``: inference mode (the file's running statistics) on ImageNet-normalised
    inputs, the way the network was trained; features are per image.

Weights come from a file, never from the network: an ``.npz`` holding a torchvision
``vgg19`` / ``vgg19_bn`` state dict (keys ``features.<i>.weight`` ...), written from PyTorch
with ``python -m prism_jax.vgg convert vgg19.pth vgg19.npz`` (or
``np.savez(path, **{k: v.numpy() for k, v in torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict().items()})``).
"""
from __future__ import annotations

import argparse
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import generator

# torchvision cfg "E": conv widths per block, 2x2 max-pool after each block.
BLOCKS = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
          (512, 512, 512, 512))
NUM_CONV = sum(len(b) for b in BLOCKS)     # 16
LAYER_CHOICES = ("first", "last")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5


class VGG19(nn.Module):
  """VGG19 convolutional trunk returning every conv layer's ReLU output (NHWC).

  ``width`` scales the channel counts (1.0 is the real VGG19; tests use a thin one).
  """
  batch_norm: bool = False
  width: float = 1.0
  conv_impl: str | None = None
  batch_stats: bool = False   # BN with the current batch's statistics (PyTorch train mode)
  matmul_dtype: str | None = None   # generator.matmul: None (float32) or "bfloat16"

  @nn.compact
  def __call__(self, x, valid=None):
    """``valid`` (bool ``[batch]``, batch statistics only): the rows the statistics are over."""
    impl = self.conv_impl or generator.conv_auto_impl()
    outs, i = [], 0
    for block in BLOCKS:
      for c in block:
        c = max(1, int(c * self.width))
        kernel = self.param(f"conv{i}", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], c))
        bias = self.param(f"conv{i}_bias", nn.initializers.zeros, (c,))
        x = generator.conv2d(x, kernel, impl, self.matmul_dtype) + bias
        if self.batch_norm:
          bn = {k: self.param(f"bn{i}_{k}", init, (c,)) for k, init in (
              ("scale", nn.initializers.ones), ("bias", nn.initializers.zeros),
              ("mean", nn.initializers.zeros), ("var", nn.initializers.ones))}
          if self.batch_stats:
            x = generator.batch_norm(x, BN_EPS, valid)
          else:
            x = (x - bn["mean"]) * jax.lax.rsqrt(bn["var"] + BN_EPS)
          x = x * bn["scale"] + bn["bias"]
        x = jax.nn.relu(x)
        outs.append(x)
        i += 1
      x = max_pool2x2(x)
    return outs


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling, stride 2, of NHWC ``x`` (odd rows / columns dropped, as PyTorch).

  A window reduction, whose gradient goes to the argmax it found. The gradient of a
  reshape-and-``max`` instead goes to the entries equal to the recomputed maximum, and XLA
  may recompute the pooled map in another fusion, rounded differently (seen at LLVM
  optimisation level 0 after a batch norm): no entry equals it and the gradient is 0 / 0."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def to_rgb(images: jax.Array) -> jax.Array:
  """Grey images repeated to 3 channels."""
  return jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def imagenet_range(images: jax.Array) -> jax.Array:
  """Colour images in [-1, 1] -> each channel's ImageNet-normalised range, as the official
  client's ``preprocess_fakeData`` maps generated images (``(x + 1) range / 2 + min``);
  grey images unchanged (the network repeats them to RGB)."""
  if images.shape[-1] != 3:
    return images
  mean, std = jnp.asarray(IMAGENET_MEAN, images.dtype), jnp.asarray(IMAGENET_STD, images.dtype)
  lo, hi = -mean / std, (1.0 - mean) / std
  return (images + 1.0) * (hi - lo) / 2.0 + lo


def normalize(images: jax.Array) -> jax.Array:
  """[-1, 1] images (1 or 3 channels) -> ImageNet-normalised RGB."""
  x = (to_rgb(images) + 1.0) / 2.0
  return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)


def check_layers(num_layers: int, layers: str) -> None:
  if not 1 <= num_layers <= NUM_CONV:
    raise ValueError(f"num_layers must lie in [1, {NUM_CONV}], got {num_layers}")
  if layers not in LAYER_CHOICES:
    raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")


def selected(outs: list, num_layers: int, layers: str = "first") -> list:
  """The ``num_layers`` first (official ``numLayersToFtrMatching``) or last of ``outs``."""
  return outs[:num_layers] if layers == "first" else outs[len(outs) - num_layers:]


def features(params, images: jax.Array, *, num_layers: int = NUM_CONV, layers: str = "first",
             batch_norm: bool = False, width: float = 1.0, official: bool = False,
             valid: jax.Array | None = None, matmul_dtype: str | None = None) -> jax.Array:
  """``[B, H, W, C]`` in [-1, 1] -> ``[B, D]``: ``num_layers`` conv ReLU maps, the first or
  the last (``layers``), each flattened in (H, W, C) order (``official``: batch-statistics
  BN on raw [-1, 1] inputs, see the module docstring; ``valid``: the rows of a padded batch
  that its statistics are over)."""
  check_layers(num_layers, layers)
  x = to_rgb(images) if official else normalize(images)
  outs = VGG19(batch_norm, width, batch_stats=official,
               matmul_dtype=matmul_dtype).apply({"params": params}, x, valid)
  outs = selected(outs, num_layers, layers)
  return jnp.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=1)


def init_params(key: jax.Array, batch_norm: bool = False, width: float = 1.0,
                image_size: int = 32):
  """Random VGG19 parameters (tests and smoke runs; never for reported numbers)."""
  return VGG19(batch_norm, width).init(key, jnp.zeros((1, image_size, image_size, 3)))["params"]


def torch_layout(batch_norm: bool, width: float = 1.0) -> dict[str, tuple[int, ...]]:
  """Expected torchvision state-dict keys and shapes of ``vgg19`` / ``vgg19_bn.features``."""
  shapes, idx, cin = {}, 0, 3
  for block in BLOCKS:
    for c in block:
      c = max(1, int(c * width))
      shapes[f"features.{idx}.weight"] = (c, cin, 3, 3)
      shapes[f"features.{idx}.bias"] = (c,)
      idx += 1
      if batch_norm:
        for k in ("weight", "bias", "running_mean", "running_var"):
          shapes[f"features.{idx}.{k}"] = (c,)
        idx += 1
      idx += 1          # ReLU
      cin = c
    idx += 1            # MaxPool
  return shapes


def from_torch_state_dict(state: dict, batch_norm: bool | None = None, width: float = 1.0):
  """Flax params from a torchvision VGG19 state dict (name -> array); checks every shape.

  ``batch_norm=None`` infers ``vgg19`` vs ``vgg19_bn`` from the keys. A missing key or a
  wrong shape raises ``ValueError`` naming the layer.
  """
  if batch_norm is None:
    batch_norm = "features.1.running_mean" in state
  layout = torch_layout(batch_norm, width)
  for key, shape in layout.items():
    if key not in state:
      raise ValueError(f"VGG19{'_bn' if batch_norm else ''} weights: missing {key!r}")
    got = tuple(np.shape(state[key]))
    if got != shape:
      raise ValueError(f"VGG19 weights: layer {key!r} has shape {got}, expected {shape}")
  params, i = {}, 0
  convs = [k[:-len(".weight")] for k, s in layout.items() if len(s) == 4]
  for i, name in enumerate(convs):
    params[f"conv{i}"] = jnp.asarray(np.transpose(state[name + ".weight"], (2, 3, 1, 0)))
    params[f"conv{i}_bias"] = jnp.asarray(state[name + ".bias"])
    if batch_norm:
      bn = f"features.{int(name.split('.')[1]) + 1}"
      for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                           ("var", "running_var")):
        params[f"bn{i}_{ours}"] = jnp.asarray(state[f"{bn}.{theirs}"])
  return params


def load_params(path: str, batch_norm: bool | None = None, width: float = 1.0):
  """Flax params from an ``.npz`` torchvision state dict (see module docstring)."""
  try:
    with np.load(path) as f:
      state = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"VGG19 weights file {path} is unreadable ({e})") from e
  return from_torch_state_dict(state, batch_norm, width)


def layer_shapes(image_size: int, num_layers: int = NUM_CONV, width: float = 1.0,
                 layers: str = "first") -> list[tuple[int, int, int]]:
  """``(H, W, C)`` of each selected ReLU map at ``image_size``, in feature order."""
  shapes, size = [], image_size
  for block in BLOCKS:
    shapes += [(size, size, max(1, int(c * width))) for c in block]
    size = max(size // 2, 0)
  return selected(shapes, num_layers, layers)


def num_features(image_size: int, num_layers: int = NUM_CONV, width: float = 1.0,
                 layers: str = "first") -> int:
  """Feature dimension D at ``image_size`` (303,104 for all 16 layers at 32x32)."""
  return sum(math.prod(s) for s in layer_shapes(image_size, num_layers, width, layers))


def make_extractor(num_layers: int = NUM_CONV, batch_norm: bool = False, width: float = 1.0,
                   official: bool = False, layers: str = "first",
                   matmul_dtype: str | None = None):
  """``psi(params, images)`` with the layer selection bound (static under jit)."""
  check_layers(num_layers, layers)
  return functools.partial(features, num_layers=num_layers, layers=layers,
                           batch_norm=batch_norm, width=width, official=official,
                           matmul_dtype=matmul_dtype)


def _convert(argv=None):
  parser = argparse.ArgumentParser(description="torchvision VGG19 .pth -> prism_jax .npz")
  parser.add_argument("command", choices=["convert"])
  parser.add_argument("src", help="torchvision vgg19 / vgg19_bn state dict (.pth)")
  parser.add_argument("dst", help="output .npz")
  args = parser.parse_args(argv)
  import torch  # only the conversion needs PyTorch
  state = torch.load(args.src, map_location="cpu")
  state = {k: v.numpy() for k, v in state.items() if k.startswith("features.")}
  from_torch_state_dict(state)         # validate before writing
  np.savez(args.dst, **state)
  print(f"wrote {args.dst}: {len(state)} arrays, "
        f"{sum(math.prod(v.shape) for v in state.values()):,} values")


if __name__ == "__main__":
  _convert()
