"""The paper's MNIST setting on one accelerator, for as many rounds as fit a time budget.

10 clients x 100 local steps of batch 64, the 3.5M-weight generator, VGG19 features (random
weights unless ``--vgg19`` names a ``vgg19_bn`` file; run as the official code runs it),
GFMN moment matching, MADA, Dirichlet(0.005) over offline MNIST. Writes ``accelerator.json``
(device, compile time, seconds per round, peak device memory, loss per round) and
``accelerator_samples.png`` (the fixed mask's samples after the last round).

  bash benchmarks/accelerator.sh                   # GPU / TPU, at most 8 minutes
  python -m benchmarks.accelerator --smoke         # any machine, seconds (a thin VGG)
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.configs import paper
from prism_jax import algorithm, client_data, configure, sharding
from prism_jax import evaluation, generator, visualize
from prism_jax import round as rnd


def config(smoke: bool, vgg19: str | None):
  c = paper.get_config("mnist_offline,dirichlet" + (",smoke" if smoke else ""))
  c.rounds = 2 if smoke else 1000    # the budget decides on an accelerator
  if smoke:   # the same path (official VGG19 + GFMN), thin and small
    c.features, c.loss.name = "vgg19", "gfmn"
    c.features_kwargs = dict(weights="random", width=0.0625, num_layers=16, official=True)
    c.loss.kwargs = {"learning_rate": 1e-5, "v_init": "torch"}
    c.min_client_size = 64
  else:
    c.features_kwargs.weights = vgg19 or "random"
  return c


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run(c, budget_s: float, out_dir: str) -> dict:
  t_start = time.perf_counter()
  prism = configure.build(c)
  _, parts, data = client_data.load_client_data(c)
  data = client_data.with_real_stats(prism, c, data, parts)
  mesh = sharding.client_mesh()
  data = sharding.shard_client_data(data, mesh)
  k_init, k_rounds, k_eval, k_final = configure.run_keys(c.train_seed)
  state = algorithm.init_state(prism.model, c.seed, k_init, c.score_std, prism)
  step = rnd.make_round_step(prism, mesh, donate=True)
  setup_s = time.perf_counter() - t_start
  seconds, losses = [], []
  r = 0
  while True:
    t0 = time.perf_counter()
    state, m = step(state, data, jax.random.fold_in(k_rounds, r))
    losses.append(float(m["loss"]))                 # blocks until the round is done
    seconds.append(time.perf_counter() - t0)
    r += 1
    elapsed = time.perf_counter() - t_start
    # At least two rounds (compile + one steady), then as many as the budget allows.
    if r >= c.rounds or (r >= 2 and elapsed + 1.5 * max(seconds[1:]) > budget_s):
      break
  weights = generator.init_weights(prism.model, c.seed)
  z = jax.random.normal(k_eval, (64, prism.model.nz))
  images = evaluation.sample(prism.model, weights, state.scores, z, k_final, "fixed")
  os.makedirs(out_dir, exist_ok=True)
  visualize.save_grid(images, os.path.join(out_dir, "accelerator_samples.png"))
  result = {
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "devices": jax.device_count(), "setting": c.setting,
      "masked_weights": int(sum(x.size for x in jax.tree.leaves(state.scores))),
      "clients": prism.num_clients, "local_steps": prism.local.local_steps,
      "batch": prism.local.batch_size, "features": prism.objective.features.name,
      "setup_seconds": setup_s, "rounds": r,
      "first_round_seconds (compile + run)": seconds[0],
      "compile_seconds (first - steady)": seconds[0] - float(np.median(seconds[1:] or seconds)),
      "seconds_per_round": float(np.median(seconds[1:] or seconds)),
      "client_steps_per_second": prism.per_round * prism.local.local_steps
                                 / float(np.median(seconds[1:] or seconds)),
      "peak_device_memory_bytes": peak_memory_bytes(),
      "loss": losses, "total_seconds": time.perf_counter() - t_start}
  with open(os.path.join(out_dir, "accelerator.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny config (CPU, seconds)")
  parser.add_argument("--budget_s", type=float, default=420, help="stop starting rounds after")
  parser.add_argument("--vgg19", default=None, help="a vgg19_bn .npz (default: random weights)")
  parser.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/accelerator")
  args = parser.parse_args(argv)
  result = run(config(args.smoke, args.vgg19), args.budget_s, args.out)
  print(json.dumps({k: v for k, v in result.items() if k != "loss"}, indent=1))


if __name__ == "__main__":
  main()
