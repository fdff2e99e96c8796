"""Device memory of one jitted round, per client, and how many clients fit at once.

XLA's own memory analysis of the compiled round (no execution) for 2 and 4 clients gives the
bytes each extra vmapped client costs (its scores, Adam state, activations and mask) and
the fixed part (frozen weights, global scores, the server's reduction). Clients beyond what
fits run in chunks inside the same jit (``Prism(client_chunk=c)``), which bounds memory by
``c`` clients; the round state itself does not grow with the number of rounds.

  python -m benchmarks.memory          # about 2 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json

import jax

from benchmarks.round_throughput import GENERATORS, setup
from prism_jax import masking
from prism_jax import round as rnd

DEVICES_GB = (16, 40, 80)   # e.g. a TPU v2/v3 core or T4 / A100-40 / A100-80, H100


def round_bytes(gen: str, clients: int, local_steps: int, batch: int) -> dict:
  prism, data, state = setup(gen, clients, local_steps, batch)
  step = rnd.make_round_step(prism)
  fp = prism.objective.features.params
  compiled = step.jitted.lower(state, data, jax.random.key(0), fp).compile()
  m = compiled.memory_analysis()
  return {"temp": m.temp_size_in_bytes, "args": m.argument_size_in_bytes,
          "out": m.output_size_in_bytes, "weights": masking.num_weights(state.scores)}


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="benchmarks/results/memory.json")
  parser.add_argument("--local_steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)
  rows = []
  for gen in GENERATORS:
    a = round_bytes(gen, 2, args.local_steps, args.batch)
    b = round_bytes(gen, 4, args.local_steps, args.batch)
    total = lambda r: r["temp"] + r["args"] + r["out"]   # noqa: E731
    per_client = (total(b) - total(a)) / 2
    fixed = total(a) - 2 * per_client
    row = {"generator": gen, "masked_weights": a["weights"], "batch": args.batch,
           "per_client_MB": per_client / 2**20, "fixed_MB": fixed / 2**20,
           "fit": {gb: int((gb * 2**30 - fixed) // per_client) for gb in DEVICES_GB}}
    rows.append(row)
    print(json.dumps(row), flush=True)
  with open(args.out, "w") as f:
    json.dump({"backend": jax.default_backend(), "rows": rows}, f, indent=2)
  lines = [f"| generator | masked weights | MB per client (batch {args.batch}) | fixed MB | "
           + " | ".join(f"clients at once in {gb} GB" for gb in DEVICES_GB) + " |",
           "|---|---|---|---|" + "---|" * len(DEVICES_GB)]
  for r in rows:
    lines.append(f"| {r['generator']} | {r['masked_weights']:,} | {r['per_client_MB']:.1f} | "
                 f"{r['fixed_MB']:.1f} | " + " | ".join(f"{r['fit'][gb]:,}" for gb in DEVICES_GB)
                 + " |")
  print("\n".join(lines))
  with open(args.out.replace(".json", ".md"), "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
