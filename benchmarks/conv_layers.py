"""Each 3x3 convolution of the paper-size step by im2col, by im2col in batch tiles and by
Winograd F(2x2, 3x3), the measurement behind ``conv_impl="cpu"``'s per-layer choice
(``generator.WINOGRAD_MIN_CHANNELS``, ``generator.IM2COL_TILE_BYTES``) and behind
``"cpu_clients"`` (the kernel gradient's layout when clients are vmapped).

Batch 64, inside a ``lax.scan`` as the round runs them, seconds per step after compilation,
median of 3: forward + input gradient (VGG19's layers, frozen) and forward + both gradients
(the generator's, whose kernels are masked and trained); then the default run's generator
layers (ngf 16) vmapped over 2 clients with a kernel each, im2col with XLA's kernel-gradient
layout against ``"cpu_clients"``'s, and the latter in batch tiles (below
``generator.TILE_MIN_CHANNELS``, so not how the round runs them).

  python -m benchmarks.conv_layers --out=benchmarks/results/conv_layers.json   # ~5 minutes
"""
from __future__ import annotations

import argparse
import json
from unittest import mock

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
  if impl == "tiled":
    tiles = tiles_of(size, cin)
    conv = lambda x, k: generator.tiled_im2col_conv(x, k, tiles)   # noqa: E731
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


def tiles_of(size: int, cin: int) -> int:
  """The batch tiles of an im2col layer's columns at ``IM2COL_TILE_BYTES`` (1: untiled)."""
  return generator.batch_tiles(64, generator.column_bytes((64, size, size, cin), (3, 3, cin, 1)))


def markdown(result: dict) -> str:
  """The two tables of docs/performance.md."""
  lines = ["| layer (size, in, out) | gradients | im2col ms | im2col in batch tiles ms (tiles) "
           "| Winograd ms | Winograd / im2col |", "|---|---|---|---|---|---|"]
  for r in result["paper_layers"]:
    grads = "input, kernel" if r["kernel_grad"] else "input"
    tiled = f"{r['tiled_ms']:.1f} ({r['tiles']})" if r["tiles"] > 1 else "-"
    lines.append(f"| {tuple(r['layer'])} | {grads} | {r['im2col_ms']:.1f} | {tiled} | "
                 f"{r['winograd_ms']:.1f} | {r['winograd_ms'] / r['im2col_ms']:.2f} |")
  lines += ["", "| default layer, 2 clients | im2col ms | cpu_clients ms | ratio | "
            "cpu_clients in batch tiles ms (tiles) |", "|---|---|---|---|---|"]
  for r in result["default_layers_2_clients"]:
    tiled = f"{r['cpu_clients_tiled_ms']:.1f} ({r['tiles']})" if r["tiles"] > 1 else "-"
    lines.append(f"| {tuple(r['layer'])} | {r['im2col_ms']:.1f} | {r['cpu_clients_ms']:.1f} | "
                 f"{r['cpu_clients_ms'] / r['im2col_ms']:.2f} | {tiled} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  rows = []
  for shape in PAPER:
    tiles = tiles_of(*shape[:2]) if shape[2] >= shape[1] else 1
    for kernel_grad in (False, True):
      m, w = (1e3 * seconds(i, *shape, kernel_grad) for i in ("matmul", "winograd"))
      t = 1e3 * seconds("tiled", *shape, kernel_grad) if tiles > 1 else None
      rows.append({"layer": shape, "kernel_grad": kernel_grad, "im2col_ms": m,
                   "tiles": tiles, "tiled_ms": t, "winograd_ms": w})
      print(f"{shape} kernel_grad={kernel_grad}: im2col {m:.1f} ms, tiled {t} ms, "
            f"Winograd {w:.1f} ms", flush=True)
  clients = []
  for shape in DEFAULT:
    tiles = tiles_of(*shape[:2])
    m, c = (1e3 * seconds(i, *shape, True, clients=2) for i in ("matmul", "cpu_clients"))
    t = None
    if tiles > 1:   # what batch tiles would give these layers (below TILE_MIN_*)
      with mock.patch.multiple(generator, TILE_MIN_CHANNELS=0, TILE_MIN_SIZE=0):
        t = 1e3 * seconds("cpu_clients", *shape, True, clients=2)
    clients.append({"layer": shape, "im2col_ms": m, "cpu_clients_ms": c, "tiles": tiles,
                    "cpu_clients_tiled_ms": t})
  result = {"backend": jax.default_backend(), "jax": jax.__version__, "batch": 64,
            "paper_layers": rows, "default_layers_2_clients": clients}
  print(markdown(result))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
