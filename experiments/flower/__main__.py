"""PRISM over Flower: a Flower simulation (one SuperNode per client, Ray actors) of a config,
checked against the jitted simulator for the same seeds and data.

  python -m experiments.flower --config.rounds=3 --workdir=runs/flower
  python -m experiments.flower --config=experiments/configs/paper.py:mnist_offline,dirichlet,cpu

Writes ``flower.npz`` (final global scores), ``flower.npz.jsonl`` (per-round metrics of the
Flower run) and ``compare.json`` (round times of both, largest score difference). Deployment
on separate machines uses the same apps: see ``experiments/flower/app.py``.
"""
import functools
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from prism_jax import client_data
from prism_jax import flower

_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "mnist_cpu.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/flower", "Output directory.")
_CPUS = flags.DEFINE_float("client_cpus", 2, "CPUs per Flower client actor (Ray).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from flwr.simulation import run_simulation
  config = _CONFIG.value
  dep = flower.Deployment.from_config(config)
  _, parts, data = client_data.load_client_data(config)
  data = client_data.with_real_stats(dep.prism, config, data, parts)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  out = os.path.join(_WORKDIR.value, "flower.npz")
  if os.path.exists(out + ".jsonl"):
    os.remove(out + ".jsonl")
  t0 = time.perf_counter()
  run_simulation(flower.server_app(dep, out),
                 flower.client_app(dep, functools.partial(flower.split_data, data)),
                 num_supernodes=dep.prism.num_clients,
                 backend_config={"client_resources": {"num_cpus": _CPUS.value,
                                                      "num_gpus": 0.0}})
  flower_total = time.perf_counter() - t0
  scores, sim_rows = flower.reference(dep, data)
  got = flower.load_scores(out, dep.like)
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(scores)))
  with open(out + ".jsonl") as f:
    rows = [json.loads(line) for line in f]
  result = {"rounds": dep.rounds, "flower_total_seconds": flower_total,
            "flower_round_seconds": [r["seconds"] for r in rows],
            "flower_client_seconds": [r["client_seconds"] for r in rows],
            "coded_bits_per_weight": [r["coded_bits_per_weight"] for r in rows],
            "simulator_round_seconds": [r["seconds"] for r in sim_rows],
            "flower_loss": [r["loss"] for r in rows],
            "simulator_loss": [r["loss"] for r in sim_rows], "max_abs_score_difference": diff}
  with open(os.path.join(_WORKDIR.value, "compare.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
