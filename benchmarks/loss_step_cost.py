"""What each term of the transport loss adds to a local step of the default's jitted round.

The default run (``mnist_cpu.py``: 2 vmapped clients, batch 64, ngf 16) on the Gaussian MMD
of ``:mmd``, on its curriculum's whole transport loss (Sinkhorn + strided intensity and edge
histograms + narrow MMD), the same with the Sinkhorn iterations in a ``fori_loop`` instead
of unrolled, and on each of those terms alone. A case is timed as the whole round (the round
`train` runs, without entropy coding) at two numbers of local steps; the difference divided
by the extra steps is the seconds per local step, free of the round's fixed costs. Rounds
stay on one loss (no ``refine``), so every timed round runs the loss it names.

  python -m benchmarks.loss_step_cost --out benchmarks/results/loss_step_cost.json   # ~30 min, 2 CPUs
  python -m benchmarks.loss_step_cost --cases=mmd,transport   # the two losses, ~10 min

A rerun of some cases replaces their rows in ``--out`` and keeps the others.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax

from experiments.configs import mnist_cpu
from prism_jax import sharding
from prism_jax import round as rnd
from prism_jax import train

TERMS = ("sinkhorn", "marginal_w2", "edge_w2", "gaussian_mmd")


def case_config(case: str):
  """``"mmd"``: ``mnist_cpu.py:mmd``; ``"transport"``: the default's first loss;
  ``"transport_loop"``: the same with the Sinkhorn iterations in a loop, not unrolled; a term
  name: that term of it alone (the others' weights 0, so not computed)."""
  if case == "mmd":
    return mnist_cpu.get_config("mmd")
  c = mnist_cpu.get_config()
  c.refine.start = None
  if case == "transport_loop":
    c.loss.kwargs.sinkhorn.unroll = 1
  elif case != "transport":
    if case not in TERMS:
      raise ValueError(f"unknown case {case!r}; choose mmd, transport, transport_loop or one "
                       f"of {TERMS}")
    for name in TERMS:
      if name != case:
        c.loss.kwargs[name].weight = 0.0
  return c


def round_seconds(case: str, steps: int, repeats: int = 2) -> float:
  """Fastest of ``repeats`` rounds of ``steps`` local steps, after one compiling round."""
  c = case_config(case)
  c.local.local_steps, c.coding.enabled = steps, False
  run = train.setup(c, tempfile.mkdtemp())
  step = rnd.make_round_step(run.prism, sharding.client_mesh(), donate=True)
  state, times = run.state, []
  for r in range(repeats + 1):
    t0 = time.perf_counter()
    state, m = step(state, run.client_data, jax.random.fold_in(run.keys[1], r))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return min(times[1:])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cases", default="mmd,transport,transport_loop," + ",".join(TERMS))
  p.add_argument("--steps", default="10,30", help="the two local-step counts timed")
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  lo, hi = (int(s) for s in a.steps.split(","))
  rows = {}
  if a.out and os.path.exists(a.out):   # a rerun of some cases keeps the others' rows
    with open(a.out) as f:
      rows = json.load(f)["rows"]
  for case in a.cases.split(","):
    t_lo, t_hi = round_seconds(case, lo), round_seconds(case, hi)
    rows[case] = {f"round_s_{lo}": t_lo, f"round_s_{hi}": t_hi,
                  "step_s": (t_hi - t_lo) / (hi - lo)}
    print(f"| {case} | {rows[case]['step_s']:.3f} |", flush=True)
    if a.out:   # after every case, so that an interrupted run keeps what it measured
      with open(a.out, "w") as f:
        json.dump({"backend": jax.default_backend(), "jax": jax.__version__, "rows": rows},
                  f, indent=2)


if __name__ == "__main__":
  main()
