"""What ``precision=bfloat16`` changes at the paper size (nz 128, ngf 64; VGG19-BN's 16 maps
with random weights, or the pixels; GFMN; batch 64): the relative error of the loss and of
the score gradient of one step against float32, on the same inputs and mask draw; and what
it gains on this CPU: milliseconds of a 2048^2 matmul and of one of the generator's im2col
convolutions (``[64, 16, 16, 256]``, 3x3, 256 outputs), forward and forward + backward.

  python -m benchmarks.bf16_error    # ~3 minutes on 2 CPU cores (an idle machine)
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import client, features, generator, losses

OUT = os.path.join(os.path.dirname(__file__), "results", "bf16_error.json")


def loss_and_grad(row: str, dtype: str | None):
  """One step's GFMN loss and score gradient at the paper size, matmuls in ``dtype``."""
  model = generator.ResNetGenerator(32, 1, 128, 64, matmul_dtype=dtype)
  ext = features.pixels if row == "pixels" else features.get_extractor(
      "vgg19", weights="random", image_size=32, num_layers=16, official=True,
      matmul_dtype=dtype)
  obj = client.Objective(model, ext, losses.get_loss("gfmn", learning_rate=1e-5,
                                                     v_init="torch"))
  weights = generator.init_weights(model, 0)
  scores = generator.init_scores(jax.random.key(1), weights)
  rng = np.random.default_rng(0)
  dim = obj.feature_dim()
  stats = (jnp.asarray(0.1 * rng.normal(size=(dim,)), jnp.float32),
           jnp.asarray(rng.uniform(size=(dim,)), jnp.float32))
  state = obj.init_loss_state(0)
  return jax.jit(jax.value_and_grad(
      lambda s: obj(s, weights, stats, jax.random.key(2), None, state, 64)[0]))(scores)


def _flat(tree):
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def _ms(f, *xs, repeats: int = 10) -> float:
  jax.block_until_ready(f(*xs))
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(f(*xs))
  return (time.perf_counter() - t0) / repeats * 1e3


def timings() -> dict:
  """Milliseconds in float32 and bfloat16 (inputs; float32 sums)."""
  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  x = jax.random.normal(jax.random.key(1), (64, 16, 16, 256))
  k = jax.random.normal(jax.random.key(2), (3, 3, 256, 256))
  out = {}
  for name, d in (("float32", None), ("bfloat16", "bfloat16")):
    conv = lambda x, k, d=d: generator.conv2d(x, k, "matmul", d)  # noqa: E731
    out[name] = {
        "matmul_2048_ms": _ms(jax.jit(lambda a, d=d: generator.matmul(a, a, d)), a),
        "conv_forward_ms": _ms(jax.jit(conv), x, k),
        "conv_forward_backward_ms": _ms(jax.jit(jax.grad(
            lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))), x, k)}
  return out


def main(path=OUT):
  out = {"timings": timings()}
  print(out["timings"], flush=True)
  for row in ("vgg19", "pixels"):
    (l32, g32), (l16, g16) = (loss_and_grad(row, d) for d in (None, "bfloat16"))
    g32, g16 = _flat(g32), _flat(g16)
    out[row] = {"loss_rel_err": float(abs(l16 - l32) / abs(l32)),
                "grad_rel_err": float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32)),
                "grad_cosine": float(g16 @ g32 / jnp.linalg.norm(g16) / jnp.linalg.norm(g32))}
    print(row, out[row], flush=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main(*sys.argv[1:])
