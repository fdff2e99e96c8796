"""The fixed-mask domain-FID of the official suite's final models over several mask draws.

  python -m benchmarks.official_draws --official=/tmp/PRISM_ICLR25 --draws=5

The exported model is one Bernoulli draw from the final theta; where theta stays uncertain
(MADA keeps it near 0.5 longer), one draw's domain-FID varies from draw to draw. For every
finished run of ``--suite=official`` this scores ``--draws`` masks drawn from its final
global scores (prism-jax: the run's last checkpoint; official: its ``checkpoint.pt``) on the
run's evaluator and writes ``fixed_draws.json`` beside its metrics, which the report reads.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os

import jax
import numpy as np


def jax_draws(run, workdir: str, n: int) -> list[float]:
  from experiments.configs import overrides
  from prism_jax import evaluation, train
  config = overrides.load_config_file(run.setting)   # as the suite ran it
  config.mada, config.seed, config.train_seed = dict(run.overrides)["mada"], run.seed, run.seed
  with contextlib.redirect_stdout(io.StringIO()):
    r = train.setup(config, workdir, resume=True)
  ev = _evaluator(r.prism.model, config)
  out = []
  for i in range(n):
    images = evaluation.sample(r.prism.model, r.weights, r.state.scores, ev.z,
                               jax.random.fold_in(jax.random.key(17), i), "fixed")
    out.append(float(ev.metrics(images, "fixed")["domain_fid_fixed"]))
  return out


def _evaluator(model, config):
  from prism_jax import client_data, configure, evaluation
  splits = client_data.load_splits(config)[0]
  return evaluation.make_evaluator(model, splits, 10, jax.random.key(1),
                                   config.eval.num_samples, configure.cache_dir(config),
                                   config.dataset, modes=("fixed",),
                                   domain_epochs=config.eval.domain_epochs)


def official_draws(off, run, workdir: str, n: int) -> list[float]:
  import torch

  from benchmarks import official as O
  from benchmarks import official_run as R
  from experiments.configs import overrides
  from prism_jax import generator
  config = overrides.load_config_file(run.setting)
  args = O.args(off, nz=config.nz, ngf=config.ngf, nc=1, imageSize=32, dataset="mnist")
  model = off.model.ResnetG(args, config.nz, 1, config.ngf, 32, adaptFilterSize=True,
                            useConvAtSkipConn=False)
  model.load_state_dict(torch.load(os.path.join(workdir, "checkpoint.pt"),
                                   weights_only=False)["global"])
  ev = _evaluator(generator.ResNetGenerator(32, 1, config.nz, config.ngf), config)
  z = np.asarray(ev.z, np.float32)
  out = []
  for i in range(n):
    torch.manual_seed(100 + i)
    out.append(float(ev.metrics(R.samples(model, z, "fixed"), "fixed")["domain_fid_fixed"]))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official", required=True)
  p.add_argument("--draws", type=int, default=5)
  p.add_argument("--runs_dir", default=os.path.join("results", "official"))
  a = p.parse_args(argv)
  from benchmarks import official as O
  from experiments import results
  off = O.load(os.path.abspath(a.official))
  for run in results.SUITES["official"]():
    workdir = os.path.join(a.runs_dir, run.name)
    path = os.path.join(workdir, "fixed_draws.json")
    if not os.path.exists(os.path.join(workdir, "summary.json")) or os.path.exists(path):
      continue
    fids = (official_draws(off, run, workdir, a.draws) if run.runner == "official"
            else jax_draws(run, workdir, a.draws))
    with open(path, "w") as f:
      json.dump({"domain_fid_fixed": fids}, f)
    print(run.name, [round(v, 1) for v in fids], flush=True)


if __name__ == "__main__":
  main()
