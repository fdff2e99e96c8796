"""Seconds per round of the secure Flower deployment (TLS, registered SuperNodes, one
ClientApp process per message as Flower 1.42 runs them) against the jitted simulator, on the
same machine and config.

  python -m benchmarks.deployment                # default config, 4 rounds of 20 local steps
  python -m benchmarks.deployment --quick        # a toy config (smoke)

Rows: the simulator (``flower.reference``: the one-jit round); the deployment computing in
the ClientApp process Flower starts per message, reloading the data every message (as before
warm nodes) or keeping the node's share on its disk (``deploy.worker=False``); and warm nodes
(the default: a long-lived worker per node keeps data and compiled update). Steady state: the median of the rounds
after the first. Writes ``benchmarks/results/deployment.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax

from experiments.flower import deploy as fd

CONFIG = """
from experiments.configs import mnist_cpu


def get_config():
  c = mnist_cpu.get_config("mmd")
  c.rounds, c.local.local_steps = {rounds}, {steps}
  c.deploy.node_cache, c.deploy.worker = {node_cache}, {worker}
  c.cache_dir = {cache!r}
  {extra}
  return c
"""
QUICK = ("c.image_size, c.nz, c.ngf, c.num_clients = 8, 4, 2, 3; "
         "c.local.batch_size = 8")


def _config(directory, rounds, steps, quick, node_cache=True, worker=True):
  path = os.path.join(directory, f"config-{node_cache}-{worker}.py")
  with open(path, "w") as f:
    f.write(CONFIG.format(rounds=rounds, steps=steps, node_cache=node_cache, worker=worker,
                          cache=os.path.join(directory, "cache"), extra=QUICK if quick else ""))
  return path


def deployment_rounds(directory: str, config: str, clients: int) -> list[dict]:
  """Runs the secure local deployment of ``config`` once; its per-round metric rows."""
  fed = fd.start_federation(directory, clients, config)
  try:
    if fed.run().wait(3600):
      with open(os.path.join(fed.workdir, "run.log")) as f:
        raise RuntimeError(f"deployment failed:\n{f.read()[-3000:]}")
  finally:
    fed.stop()
  with open(fed.out + ".jsonl") as f:
    return [json.loads(line) for line in f]


def simulator_rounds(config_path: str) -> list[float]:
  from experiments.flower.client import load_config
  from prism_jax import client_data
  from prism_jax import flower
  config = load_config(config_path)
  dep = flower.Deployment.from_config(config)
  _, parts, data = client_data.load_client_data(config)
  _, rows = flower.reference(dep, client_data.with_real_stats(dep.prism, config, data, parts))
  return [r["seconds"] for r in rows]


def table(rows: list[dict]) -> list[str]:
  lines = ["| | first round (s) | steady round (s) | client compute (s) |", "|---|---|---|---|"]
  return lines + [f"| {r['what']} | {r['first_s']:.1f} | {r['steady_s']:.1f} | " + (
      f"{r['client_compute_s']:.2f} |" if "client_compute_s" in r else "- |") for r in rows]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "deployment"))
  args = p.parse_args()
  clients = 3 if args.quick else 10
  rows, result = [], {"device": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "jax": jax.__version__, "rounds": args.rounds,
                      "local_steps": args.steps, "quick": args.quick}
  with tempfile.TemporaryDirectory() as tmp:
    sim = simulator_rounds(_config(tmp, args.rounds, args.steps, args.quick))
    rows.append({"what": "jitted simulator (one-jit round)", "first_s": sim[0],
                 "steady_s": statistics.median(sim[1:])})
    for what, cache, worker in (
        ("a ClientApp process computes, data reloaded every message", False, False),
        ("a ClientApp process computes, node data cached on disk", True, False),
        ("warm nodes: a long-lived worker per node computes", True, True)):
      t0 = time.perf_counter()
      got = deployment_rounds(os.path.join(tmp, f"deploy-{cache}-{worker}"),
                              _config(tmp, args.rounds, args.steps, args.quick, cache, worker),
                              clients)
      secs = [r["seconds"] for r in got]
      rows.append({"what": "deployment: " + what,
                   "first_s": secs[0], "steady_s": statistics.median(secs[1:]),
                   "client_compute_s": statistics.median(r["client_seconds"] for r in got[1:]),
                   "total_s": time.perf_counter() - t0})
  result["rows"] = rows
  lines = table(rows)
  print("\n".join(lines))
  if not args.quick:
    with open(args.out + ".json", "w") as f:
      json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
