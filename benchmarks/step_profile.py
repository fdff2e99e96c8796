"""Where the paper-size client step's time goes on this machine (the figures behind docs/performance.md's
comparison with the official code).

The generator's forward + backward (batch 64, nz 128, ngf 64, 32x32, 3.5M weights) with each
convolution implementation, inside the local steps' ``lax.scan`` (as the round runs it) and
unrolled (straight-line code); the same with the upsampling convolutions computed at the
high resolution (``conv2d(upsample2x(x))``) instead of as sub-pixel phases
(``generator.upsample_conv2d``), at the paper's and the default's width; and the 3.5M-weight
Bernoulli mask draw alone. Seconds per local step, after compilation.

  python -m benchmarks.step_profile                  # about 2 minutes on 2 CPU cores
  python -m benchmarks.step_profile --native_in_scan # + XLA's convolution in the scan (slow)
"""
from __future__ import annotations

import argparse
import contextlib
import json

import jax
import jax.numpy as jnp

from benchmarks.round_throughput import _timed
from prism_jax import generator, masking

STEPS = 2
OLD = "im2col, in the scan, upsampling convolutions at high resolution"
OLD_DEFAULT = "default generator (ngf 16), " + OLD


@contextlib.contextmanager
def upsample_then_conv():
  """The upsampling convolutions computed as written, ``conv2d(upsample2x(x))`` at the high
  resolution, instead of :func:`prism_jax.generator.upsample_conv2d`'s sub-pixel phases."""
  subpixel = generator.upsample_conv2d
  generator.upsample_conv2d = lambda x, k, impl="xla": generator.conv2d(
      generator.upsample2x(x), k, impl)
  try:
    yield
  finally:
    generator.upsample_conv2d = subpixel


def generator_step(impl: str, unroll: bool, batch: int = 64, ngf: int = 64) -> float:
  """Seconds per local step of plain gradient steps on the generator's weights."""
  model = generator.ResNetGenerator(32, 1, 128, ngf, conv_impl=impl)
  weights = generator.init_weights(model, 0)
  z = jax.random.normal(jax.random.key(0), (batch, model.nz))
  grad = jax.grad(lambda w: jnp.mean(jnp.square(model.apply({"params": w}, z))))

  def body(w, _):
    return jax.tree.map(lambda a, g: a - 1e-3 * g, w, grad(w)), None

  run = jax.jit(lambda w: jax.lax.scan(body, w, None, length=STEPS, unroll=unroll)[0])
  return _timed(lambda: run(weights), repeats=2)[1] / STEPS


def mask_draw() -> float:
  """Seconds of one Bernoulli(sigmoid(scores)) draw over the paper generator's weights."""
  model = generator.ResNetGenerator(32, 1, 128, 64)
  scores = generator.init_scores(jax.random.key(0), generator.init_weights(model, 0))
  draw = jax.jit(lambda k, s: masking.sample_binary(k, masking.keep_prob(s)))
  return _timed(lambda: draw(jax.random.key(1), scores), repeats=5)[1]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--native_in_scan", action="store_true",
                 help="also XLA's convolution inside the scan (minutes per step on XLA:CPU)")
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  rows = {"im2col (matmul), in the scan": generator_step("matmul", False),
          "im2col (matmul), unrolled": generator_step("matmul", True),
          "XLA convolution, unrolled": generator_step("xla", True),
          "default generator (ngf 16), im2col, in the scan": generator_step("matmul", False,
                                                                             ngf=16)}
  with upsample_then_conv():   # what the sub-pixel upsampling convolutions save
    rows[OLD] = generator_step("matmul", False)
    rows[OLD_DEFAULT] = generator_step("matmul", False, ngf=16)
  if a.native_in_scan:
    rows["XLA convolution, in the scan"] = generator_step("xla", False)
  rows["mask draw (3.5M Bernoulli)"] = mask_draw()
  print(f"{jax.default_backend()}, JAX {jax.__version__}; seconds per local step")
  for name, s in rows.items():
    print(f"| {name} | {s:.3f} |")
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"backend": jax.default_backend(), "jax": jax.__version__, "seconds": rows},
                f, indent=2)


if __name__ == "__main__":
  main()
