"""One client's local step against the official PyTorch code, same machine, same process run.

The official side is the official repository's own code, imported from where it was fetched
(nothing of it is copied here): ``clients.prism.Client.local_train`` with
``models.prism.ResnetG`` and the VGG19-BN feature extractor (``models.vgg_pytorch``, random
weights: the pretrained download is switched off), real-feature statistics given instead of
precomputed from data. Ours is :func:`prism_jax.round.make_round_step` with one client and the
same sizes. Each side runs a warm-up (compilation for JAX), then ``--steps`` local steps
timed; the table gives seconds per local step and the ratio.

  pip install torch==2.13.0     # CPU build (benchmarks.official: torch alone suffices)
  git clone https://github.com/tjrudrnr2/PRISM_ICLR25 /tmp/PRISM_ICLR25
  python -m benchmarks.vs_official --official=/tmp/PRISM_ICLR25            # paper size
  python -m benchmarks.vs_official --official=/tmp/PRISM_ICLR25 --size=small --steps=2

It also measures the ceiling: float32 matmul throughput of both frameworks on this machine
and the step's FLOPs (XLA's cost analysis), so each side's achieved GFLOP/s and the time the
step would take at the matmul peak can be set beside the 1.5x target.

Rows: "vgg19" (the 16 ReLU maps of VGG19-BN, GFMN moment matching: the paper's step) and
"pixels" (the generator alone: GFMN on the pixels, features patched to the image itself on
the official side).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from unittest import mock

import jax
import numpy as np

SIZES = {"paper": dict(nz=128, ngf=64), "small": dict(nz=32, ngf=8)}


def official_step_seconds(repo: str, row: str, nz: int, ngf: int, batch: int, steps: int,
                          threads: int) -> float:
  """Seconds per local step of the official client (its ``local_train`` loop)."""
  import torch

  from benchmarks import official
  torch.set_num_threads(threads)
  off = official.load(repo)     # unmodified; torchvision & co. as inert stand-ins if absent
  official.offline_vgg(off)     # random VGG19 weights, no download
  args = official.args(off, nz=nz, ngf=ngf, nc=1, imageSize=32, local_bs=batch,
                       dataset="mnist", local_ep=steps, save=False)
  clf = off.classifier.getClassifier(args)
  client = off.client.Client(args, clf, None, 0, "cpu")
  if row == "pixels":   # the generator alone: GFMN on the image itself
    client.preprocess_fakeData = lambda x, *_: x
    client.extractFeatures = lambda x, detachOutput=False: x.reshape(x.shape[0], -1)
    client._Client__build_NetMeanVar(32 * 32)
    client._Client__getOptimizers()
    dim = 32 * 32
  else:
    dim = client.numFeaturesInEnc
  stats = (torch.randn(dim), torch.rand(dim))
  client.Load_precomputed_realData = lambda: stats
  with contextlib.redirect_stdout(io.StringIO()):   # its per-step progress lines
    args.local_ep = 2
    client.local_train(0, None, None)                # warm-up
    args.local_ep = steps
    t0 = time.perf_counter()
    client.local_train(0, None, None)
  return (time.perf_counter() - t0) / steps


def _ours(row: str, nz: int, ngf: int, batch: int, steps: int, conv_impl: str | None,
          dtype: str | None = None):
  """One client's jitted round (``make_round_step``) at the given size: (step, state, data).
  ``dtype="bfloat16"``: the matmuls on bf16 inputs (``config.precision``)."""
  from prism_jax import algorithm, data
  from prism_jax import client, features, generator, losses
  from prism_jax import round as rnd
  model = generator.ResNetGenerator(32, 1, nz, ngf, conv_impl=conv_impl, matmul_dtype=dtype)
  if row == "vgg19":
    extractor = features.get_extractor("vgg19", weights="random", image_size=32,
                                       num_layers=16, official=True, matmul_dtype=dtype)
  else:
    extractor = features.pixels
  objective = client.Objective(model, extractor, losses.get_loss("gfmn", learning_rate=1e-5,
                                                                 v_init="torch"))
  prism = algorithm.Prism(objective, client.LocalConfig(local_steps=steps, batch_size=batch,
                                                  carry_optimizer=True), num_clients=1)
  dim = objective.feature_dim()
  rng = np.random.default_rng(0)
  data = data.ClientData(np.zeros((1, 1, 32, 32, 1), np.uint8), np.ones((1,), np.int32),
                        (rng.normal(size=(1, dim)).astype(np.float32),
                         rng.uniform(size=(1, dim)).astype(np.float32)))
  step = rnd.make_round_step(prism, donate=True)
  state = algorithm.init_state(model, 0, jax.random.key(0), prism=prism)
  return step, state, data, objective.features.params


def ours_step_seconds(row: str, nz: int, ngf: int, batch: int, steps: int,
                      conv_impl: str | None, dtype: str | None = None) -> float:
  """Seconds per local step of one client in the jitted round (after compilation)."""
  step, state, data, _ = _ours(row, nz, ngf, batch, steps, conv_impl, dtype)
  times = []
  for r in range(3):   # round 0 compiles
    t0 = time.perf_counter()
    state, m = step(state, data, jax.random.key(r))
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  return statistics.median(times[1:]) / steps


def ours_step_gflop(row: str, nz: int, ngf: int, batch: int, conv_impl: str | None) -> float:
  """GFLOP of one local step (XLA's cost analysis of a 1-step round: a while loop's body
  would be counted once whatever its trip count, so the convolutions' batch tiles, the same
  function, are switched off here)."""
  from prism_jax import generator
  with mock.patch.object(generator, "TILE_MIN_CHANNELS", 2 ** 62):
    step, state, data, params = _ours(row, nz, ngf, batch, 1, conv_impl)
    lowered = step.jitted.lower(state, data, jax.random.key(0), params)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) / 1e9


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> dict:
  """float32 matmul throughput of each framework on this machine (the step's ceiling)."""
  import torch
  torch.set_num_threads(threads)
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda x: x @ x)
  ta = torch.randn(n, n)
  out = {}
  for name, run in (("jax", lambda: f(a).block_until_ready()), ("torch", lambda: ta @ ta)):
    run()
    t0 = time.perf_counter()
    for _ in range(repeats):
      run()
    out[name] = 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official", required=True, help="the official repository, fetched")
  p.add_argument("--size", default="paper", choices=sorted(SIZES))
  p.add_argument("--rows", default="vgg19,pixels")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--conv_impl", default=None, help="ours: xla | matmul (default: auto)")
  p.add_argument("--bf16", action="store_true", help="also ours with precision=bfloat16 "
                 "(bf16 matmul inputs, float32 sums; for CPUs with bf16 instructions)")
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  size = SIZES[a.size]
  peak = matmul_gflops(a.threads)
  best = max(peak.values())
  print(f"float32 matmul, {a.threads} threads: jax {peak['jax']:.0f} GFLOP/s, "
        f"torch {peak['torch']:.0f} GFLOP/s", flush=True)
  print(TABLE_HEADER, flush=True)
  rows = []
  for row in a.rows.split(","):
    off = official_step_seconds(os.path.abspath(a.official), row, size["nz"], size["ngf"],
                                a.batch, a.steps, a.threads)
    ours = ours_step_seconds(row, size["nz"], size["ngf"], a.batch, a.steps, a.conv_impl)
    gflop = ours_step_gflop(row, size["nz"], size["ngf"], a.batch, a.conv_impl)
    rows.append({"row": row, "official_s": off, "prism_jax_s": ours, "speedup": off / ours,
                 "gflop_per_step": gflop, "official_gflops": gflop / off,
                 "prism_jax_gflops": gflop / ours, "seconds_at_matmul_peak": gflop / best,
                 "target_s": off / 1.5})
    if a.bf16:
      bf = ours_step_seconds(row, size["nz"], size["ngf"], a.batch, a.steps, a.conv_impl,
                             "bfloat16")
      rows[-1].update(prism_jax_bf16_s=bf, speedup_bf16=off / bf)
    print(table_row(rows[-1]), flush=True)
  import torch
  result = {"size": a.size, **size, "batch": a.batch, "steps": a.steps, "threads": a.threads,
            "torch": torch.__version__, "jax": jax.__version__, "matmul_gflops": peak,
            "rows": rows}
  print(json.dumps(result, indent=1))
  print(markdown(result))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=2)


TABLE_HEADER = ("| features | official s | prism-jax s | official / prism-jax | prism-jax bf16 s | "
                "official / bf16 | GFLOP per step | official GFLOP/s | prism-jax GFLOP/s | "
                "s at the matmul peak | 1.5x target s |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
  """One row of the table (printed as it is measured, and in :func:`markdown`)."""
  bf = (f"{r['prism_jax_bf16_s']:.2f} | {r['speedup_bf16']:.2f}x"
        if "prism_jax_bf16_s" in r else "- | -")
  return (f"| {r['row']} | {r['official_s']:.2f} | {r['prism_jax_s']:.2f} | "
          f"{r['speedup']:.2f}x | {bf} | {r['gflop_per_step']:.0f} | {r['official_gflops']:.0f} | "
          f"{r['prism_jax_gflops']:.0f} | {r['seconds_at_matmul_peak']:.2f} | "
          f"{r['target_s']:.2f} |")


def markdown(result: dict) -> str:
  """The table of docs/performance.md."""
  peak = result["matmul_gflops"]
  lines = [f"float32 matmul peak here ({result['threads']} threads, 2048^2): JAX "
           f"{peak['jax']:.0f}, torch {peak['torch']:.0f} GFLOP/s.", "", TABLE_HEADER]
  return "\n".join(lines + [table_row(r) for r in result["rows"]]) + "\n"


if __name__ == "__main__":
  main()
