"""The official PRISM training loop at CPU scale, scored by this project's evaluator.

  python -m benchmarks.official_run --official=/tmp/PRISM_ICLR25 --workdir=runs/off \\
      --config=experiments/configs/official_cpu.py --mada=true --seed=0

The official server and clients (``servers.prism.Server.train``: every client's
``local_train`` with its Adam and GFMN nets kept for the whole run, ``upload_mask``,
``average_masks``, MADA with ``compare_global_mask``) run unmodified
(:mod:`benchmarks.official`) on the same offline MNIST client split as prism-jax's run of
the same config (:func:`prism_jax.client_data.load_client_data`). Two things are handed in where
the official code would download: the feature network is the config's ``cnn`` extractor (a
small CNN trained on the held-out split, the CPU stand-in for ImageNet VGG19), run in torch
with the same weights; and each client's real-feature statistics are computed by the
official ``precomputed_real_datas`` over its data in memory. Every ``eval.every`` rounds the
global model's samples are scored by :class:`prism_jax.evaluation.Evaluator`: one mask drawn
from the global theta for all samples (``fixed``, the exported model) and a fresh mask per
batch of 128 (``resampled``, the official protocol). The run directory holds
``metrics.jsonl``, sample grids, and a checkpoint after every round (global state, every
client's optimizers and GFMN nets by parameter name, RNG states), from which ``--resume``
continues.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

import numpy as np


def torch_cnn(params):
  """:class:`prism_jax.features.FeatureCNN`'s three ReLU maps in torch, same weights,
  flattened in (H, W, C) order as the JAX extractor concatenates them."""
  import torch
  import torch.nn.functional as F
  ws = [(torch.from_numpy(np.transpose(np.asarray(params[f"conv{i}"]), (3, 2, 0, 1)).copy()),
         torch.from_numpy(np.asarray(params[f"conv{i}_bias"]).copy())) for i in range(3)]

  def apply(x):
    x = x[:, :1]   # the official code repeats grey images to RGB; the CNN reads one
    maps = []
    for i, (w, b) in enumerate(ws):
      if i:
        x = F.max_pool2d(x, 2)
      x = F.relu(F.conv2d(x, w, b, padding=1))
      maps.append(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))
    return torch.cat(maps, 1)
  return apply


def build(off, config, seed: int, mada: bool):
  """The official server and clients on ``config``'s client split and feature network."""
  import torch

  from benchmarks import official as O
  from prism_jax import client_data, configure
  torch.manual_seed(seed)
  np.random.seed(seed)
  prism = configure.build(config)
  data = client_data.load_client_data(config)[2]
  images, counts = data.images, data.counts
  extractor = prism.objective.features
  feats = torch_cnn(extractor.params)
  dim = extractor.dim((32, 32, 1))
  args = O.args(off, nz=config.nz, ngf=config.ngf, nc=1, imageSize=32, dataset="mnist",
                local_bs=config.local.batch_size, local_ep=config.local.local_steps,
                num_users=config.num_clients, frac=1, lr=config.local.learning_rate,
                beta1=config.local.b1, lrMovAvrg=config.loss.kwargs.learning_rate,
                MADA=mada, save=False, seed=seed)
  clf = off.vgg.VGG(off.vgg.make_layers([8, "M"], batch_norm=False), num_classes=10,
                    get_perceptual_feats=True)   # a placeholder: features are patched below
  clf.numberOfFeaturesPerLayer = np.array([dim])
  clients = []
  for k in range(config.num_clients):
    c = off.client.Client(args, clf, None, k, "cpu")
    c.extractFeatures = lambda x, detachOutput=False: (feats(x).detach() if detachOutput
                                                       else feats(x))
    x = torch.from_numpy(np.transpose(np.asarray(images[k, :int(counts[k])]), (0, 3, 1, 2))
                         .astype(np.float32) / 127.5 - 1.0)
    order = torch.randperm(len(x))
    c.trainloader = [(x[order[i:i + 64]], None) for i in range(0, len(x), 64)]
    with torch.no_grad():
      stats = c.precomputed_real_datas()
    c.Load_precomputed_realData = (lambda s: lambda: s)(stats)
    c.trainloader = None
    clients.append(c)
  server = off.server.Server(args, clf, clients, None, "cpu")
  return server, clients, prism


def _named_states(c) -> dict:
  """A client's optimizer and GFMN states keyed by parameter name (the official optimizer
  holds a ``set`` of parameters, whose order differs between processes)."""
  names = {id(p): n for n, p in c.gfmn.named_parameters()}
  adam = {names[id(p)]: {k: v.clone() for k, v in s.items()}
          for p, s in c.optimizerG.state.items()}
  return {"adam": adam, "mean": c.NetMean.state_dict(), "var": c.NetVar.state_dict(),
          "opt_mean": c.optimizerMean.state_dict(), "opt_var": c.optimizerVar.state_dict()}


def _restore(c, saved: dict) -> None:
  params = dict(c.gfmn.named_parameters())
  for name, s in saved["adam"].items():
    c.optimizerG.state[params[name]] = s
  c.NetMean.load_state_dict(saved["mean"])
  c.NetVar.load_state_dict(saved["var"])
  c.optimizerMean.load_state_dict(saved["opt_mean"])
  c.optimizerVar.load_state_dict(saved["opt_var"])


def save(path, r, server, clients) -> None:
  import torch
  state = {"round": r, "global": server.global_model.state_dict(),
           "corr": server.globalmask_corr, "clients": [_named_states(c) for c in clients],
           "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state()}
  torch.save(state, path + ".tmp")
  os.replace(path + ".tmp", path)


def load(path, server, clients) -> int:
  import torch
  state = torch.load(path, weights_only=False)
  server.global_model.load_state_dict(state["global"])
  server.globalmask_corr[:] = state["corr"]
  for c, s in zip(clients, state["clients"]):
    _restore(c, s)
  torch.set_rng_state(state["torch_rng"])
  np.random.set_state(state["np_rng"])
  return state["round"]


def samples(model, z, mode: str) -> np.ndarray:
  """Images ``[N, H, W, 1]`` from the official global model (train mode, as its evaluation
  runs it): ``fixed``, one mask drawn from theta for every batch; ``resampled``, a fresh mask
  per batch of 128."""
  import torch

  from benchmarks import official as O
  model.train()
  layers = [m for m in model.modules() if hasattr(m, "scores")]
  out = []
  with torch.no_grad():
    fixed = [torch.bernoulli(torch.sigmoid(m.scores)).numpy() for m in layers]
    for i in range(0, len(z), 128):
      batch = torch.from_numpy(np.asarray(z[i:i + 128]))[:, :, None, None]
      if mode == "fixed":
        with O.given_draws(bernoulli=fixed):
          out.append(model(batch).numpy())
      else:
        out.append(model(batch).numpy())
  return np.concatenate(out).transpose(0, 2, 3, 1)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official", required=True)
  p.add_argument("--config", required=True, help="a config file, as experiments.train reads")
  p.add_argument("--workdir", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--mada", default="true", choices=["true", "false"])
  p.add_argument("--rounds", type=int, default=None, help="(default: the config's)")
  p.add_argument("--threads", type=int, default=1)
  a = p.parse_args(argv)
  import jax
  import torch
  torch.set_num_threads(a.threads)

  from benchmarks import official as O
  from experiments.configs import overrides
  from prism_jax import client_data, configure, evaluation, visualize
  off = O.load(os.path.abspath(a.official))
  config = overrides.load_config_file(a.config)
  config.seed = config.train_seed = a.seed
  config.mada = a.mada == "true"
  rounds = a.rounds or config.rounds
  os.makedirs(a.workdir, exist_ok=True)
  with open(os.path.join(a.workdir, "config.json"), "w") as f:
    json.dump({"config": json.loads(config.to_json()), "seed": a.seed, "mada": config.mada,
               "rounds": rounds, "implementation": "official"}, f, indent=1)
  server, clients, prism = build(off, config, a.seed, config.mada)
  splits = client_data.load_splits(config)[0]
  ev = evaluation.make_evaluator(prism.model, splits, 10, jax.random.key(1),
                                 config.eval.num_samples, configure.cache_dir(config),
                                 config.dataset, modes=("fixed", "resampled"),
                                 domain_epochs=config.eval.domain_epochs)
  z = np.asarray(ev.z, np.float32)
  ckpt = os.path.join(a.workdir, "checkpoint.pt")
  start = load(ckpt, server, clients) if os.path.exists(ckpt) else 0
  metrics_path = os.path.join(a.workdir, "metrics.jsonl")
  for r in range(start + 1, rounds + 1):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      server.train(r - 1)
    row = {"round": r, "seconds": time.perf_counter() - t0}
    if server.globalmask_corr and config.mada:
      row["mada_lambda"] = float(server.globalmask_corr[-1])
    if r % config.eval.every == 0 or r == rounds:
      for mode in ("fixed", "resampled"):
        images = samples(server.global_model, z, mode)
        row.update(ev.metrics(images, mode))
        if mode == "fixed":
          visualize.save_grid(images[:64], os.path.join(a.workdir, f"samples_{r:04d}.png"))
    with open(metrics_path, "a") as f:   # (a round redone after a crash repeats its row)
      f.write(json.dumps(row) + "\n")
    save(ckpt, r, server, clients)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in row.items() if "fid" in k or k in ("round", "seconds")}),
          flush=True)
  with open(os.path.join(a.workdir, "summary.json"), "w") as f:
    json.dump({"rounds": rounds, "final": row}, f, indent=1)


if __name__ == "__main__":
  main()
