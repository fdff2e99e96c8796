"""What ``precision=bfloat16`` changes at the paper size (nz 128, ngf 64; VGG19-BN's 16 maps
with random weights, or the pixels; GFMN; batch 64): the relative error of the loss and of
the score gradient of one step against float32, on the same inputs and mask draw.

  python -m benchmarks.bf16_error    # ~2 minutes on 2 CPU cores
"""
import json
import os
import sys

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


def main(path=OUT):
  out = {}
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
