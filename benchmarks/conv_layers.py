"""Each 3x3 convolution of the paper-size step by im2col and by Winograd F(2x2, 3x3), the
measurement behind ``conv_impl="cpu"``'s per-layer choice (``generator.WINOGRAD_MIN_CHANNELS``)
and behind ``"cpu_clients"`` (the kernel gradient's layout when clients are vmapped).

Batch 64, inside a ``lax.scan`` as the round runs them, seconds per step after compilation,
median of 3: forward + input gradient (VGG19's layers, frozen) and forward + both gradients
(the generator's, whose kernels are masked and trained); then the default run's generator
layers (ngf 16) vmapped over 2 clients with a kernel each, im2col with XLA's kernel-gradient
layout against ``"cpu_clients"``'s.

  python -m benchmarks.conv_layers --out=benchmarks/results/conv_layers.json   # ~3 minutes
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from benchmarks.round_throughput import _timed
from prism_jax import generator

# (size, in, out): VGG19's convolutions at 32x32 and the paper generator's second ones.
PAPER = ((32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256),
         (8, 256, 256), (4, 256, 512), (4, 512, 512), (2, 512, 512))
DEFAULT = ((32, 16, 16), (16, 32, 32), (8, 64, 64))   # ngf 16, 2 clients
STEPS = 2


def seconds(impl: str, size: int, cin: int, cout: int, kernel_grad: bool,
            clients: int | None = None) -> float:
  """Seconds per step of a convolution's forward and gradients (``clients``: vmapped)."""
  lead = () if clients is None else (clients,)
  x = jax.random.normal(jax.random.key(1), (*lead, 64, size, size, cin))
  k = jax.random.normal(jax.random.key(2), (*lead, 3, 3, cin, cout)) / (9 * cin) ** 0.5
  conv = lambda x, k: generator.conv2d(x, k, impl)   # noqa: E731
  if clients is not None:
    conv = jax.vmap(conv)
  loss = lambda x, k: jnp.sum(jnp.square(jax.nn.relu(conv(x, k))))   # noqa: E731
  grad = jax.grad(loss, (0, 1) if kernel_grad else 0)

  def body(c, _):
    g = grad(*c)
    g = g if kernel_grad else (g, jnp.zeros_like(c[1]))
    return (c[0] - 1e-4 * g[0], c[1] - 1e-4 * g[1]), None
  run = jax.jit(lambda x, k: jax.lax.scan(body, (x, k), None, length=STEPS)[0])
  return _timed(lambda: run(x, k), repeats=3)[1] / STEPS


def markdown(result: dict) -> str:
  """The two tables of docs/performance.md."""
  lines = ["| layer (size, in, out) | gradients | im2col ms | Winograd ms | Winograd / im2col |",
           "|---|---|---|---|---|"]
  for r in result["paper_layers"]:
    grads = "input, kernel" if r["kernel_grad"] else "input"
    lines.append(f"| {tuple(r['layer'])} | {grads} | {r['im2col_ms']:.1f} | "
                 f"{r['winograd_ms']:.1f} | {r['winograd_ms'] / r['im2col_ms']:.2f} |")
  lines += ["", "| default layer, 2 clients | im2col ms | cpu_clients ms | ratio |",
            "|---|---|---|---|"]
  for r in result["default_layers_2_clients"]:
    lines.append(f"| {tuple(r['layer'])} | {r['im2col_ms']:.1f} | {r['cpu_clients_ms']:.1f} | "
                 f"{r['cpu_clients_ms'] / r['im2col_ms']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  rows = []
  for shape in PAPER:
    for kernel_grad in (False, True):
      m, w = (1e3 * seconds(i, *shape, kernel_grad) for i in ("matmul", "winograd"))
      rows.append({"layer": shape, "kernel_grad": kernel_grad, "im2col_ms": m,
                   "winograd_ms": w})
      print(f"{shape} kernel_grad={kernel_grad}: im2col {m:.1f} ms, Winograd {w:.1f} ms",
            flush=True)
  clients = []
  for shape in DEFAULT:
    m, c = (1e3 * seconds(i, *shape, True, clients=2) for i in ("matmul", "cpu_clients"))
    clients.append({"layer": shape, "im2col_ms": m, "cpu_clients_ms": c})
  result = {"backend": jax.default_backend(), "jax": jax.__version__, "batch": 64,
            "paper_layers": rows, "default_layers_2_clients": clients}
  print(markdown(result))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
