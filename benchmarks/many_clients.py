"""Cross-device scale: 1,000 and 10,000 simulated clients, 10 or 100 of them per round.

Offline MNIST split IID over K clients and held once, as uint8, on the mesh (the round
gathers only the selected clients' rows inside the jitted step; the client array is never
copied). Clients are stateless (a fresh optimizer each round, as in cross-device FL): a
carried optimizer state would cost 2 x (masked weights) floats per client. Each configuration
runs in its own process, so its peak memory is its own. Writes
``benchmarks/results/many_clients.{json,md}``.

  python -m benchmarks.many_clients            # about 10 minutes on 2 CPU cores
  python -m benchmarks.many_clients --quick    # a smoke run (tested)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ((1_000, 10, 0), (1_000, 100, 0), (10_000, 10, 0), (10_000, 100, 0), (10_000, 100, 10))
QUICK = ((200, 4, 0), (1_000, 8, 4))


def measure(num_clients: int, per_round: int, chunk: int, local_steps: int, rounds: int) -> dict:
  """One configuration in this process: build the client data, compile, run ``rounds``
  (``chunk``: clients vmapped at once, ``lax.map`` over chunks; 0: all at once)."""
  import jax
  from prism_jax import algorithm, sharding
  from prism_jax import client, data, features, generator, losses, partition
  from prism_jax import round as rnd

  t0 = time.perf_counter()
  train = data.load("mnist_offline", 16)["train"]
  parts = partition.iid(train.labels, num_clients, seed=0)
  clients = partition.to_client_data(train.images, parts)
  mesh = sharding.client_mesh()
  clients = sharding.shard_client_data(data.ClientData(clients.images, clients.counts), mesh)
  data_s = time.perf_counter() - t0
  model = generator.ResNetGenerator(16, 1, 16, 4)   # the "small" generator: 6,452 weights
  prism = algorithm.Prism(client.Objective(model, features.pixels, losses.gaussian_mmd),
                    client.LocalConfig(local_steps=local_steps, batch_size=32,
                                       estimator="ste", learning_rate=0.3),
                    num_clients=num_clients, clients_per_round=per_round,
                    client_chunk=chunk or None)
  step = rnd.make_round_step(prism, mesh, donate=True)
  state = algorithm.init_state(model, 0, jax.random.key(0), prism=prism)
  times = []
  for r in range(rounds + 1):                        # round 0 includes compilation
    t0 = time.perf_counter()
    state, m = step(state, clients, jax.random.key(r))
    jax.block_until_ready(state.scores)
    times.append(time.perf_counter() - t0)
  mem = step.jitted.lower(state, clients, jax.random.key(0),
                          prism.objective.features.params).compile().memory_analysis()
  return {"clients": num_clients, "per_round": per_round, "chunk": chunk,
          "local_steps": local_steps,
          "client_data_mb": clients.images.nbytes / 2**20,
          "images_per_client": int(clients.images.shape[1]), "data_build_s": data_s,
          "first_round_s": times[0], "seconds_per_round": statistics.median(times[1:]),
          "xla_temp_mb": getattr(mem, "temp_size_in_bytes", 0) / 2**20,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "loss": float(m["loss"])}


def table(rows: list[dict]) -> str:
  lines = ["| clients | per round | client_chunk | images / client | client data (uint8) MB "
           "| seconds / round | first round (compile) s | XLA temp MB | peak RSS MB |",
           "|" + "---|" * 9]
  for r in rows:
    lines.append(f"| {r['clients']:,} | {r['per_round']} | {r['chunk'] or '-'} | "
                 f"{r['images_per_client']} | "
                 f"{r['client_data_mb']:.1f} | {r['seconds_per_round']:.2f} | "
                 f"{r['first_round_s']:.1f} | {r['xla_temp_mb']:.1f} | {r['peak_rss_mb']:.0f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--local_steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "many_clients"))
  p.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)   # child process
  a = p.parse_args(argv)
  if a.one:
    print(json.dumps(measure(*a.one, a.local_steps, a.rounds)))
    return
  rows = []
  for k, per_round, chunk in QUICK if a.quick else CONFIGS:
    cmd = [sys.executable, "-m", "benchmarks.many_clients", "--one", str(k), str(per_round),
           str(chunk),
           "--local_steps", str(a.local_steps), "--rounds", str(a.rounds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(table(rows[-1:]).splitlines()[-1], flush=True)
  md = table(rows)
  print(md)
  with open(a.out + ".json", "w") as f:
    json.dump({"rows": rows, "local_steps": a.local_steps}, f, indent=2)
  with open(a.out + ".md", "w") as f:
    f.write(md + "\n")
  return rows


if __name__ == "__main__":
  main()
