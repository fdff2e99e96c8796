"""The PRISM training loop: data -> partition -> rounds -> samples, metrics, checkpoint, export.

``train(config, workdir)`` runs one experiment described by an ``ml_collections`` config
(see ``experiments/configs/``) and writes everything it produced into ``workdir``:
``config.json``, ``partition.json`` / ``partition.png``, ``metrics.jsonl``, ``samples_rXXXX.png`` / ``samples.png``,
``checkpoints/`` (orbax), ``model.npz`` (seed + packed mask) and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from prism_jax import (checkpoint, client, communication, data, export, features, generator,
                       losses, masking, partition, server, visualize)
from prism_jax import round as rnd


def image_channels(config) -> int:
  """The dataset's channel count; a config that sets another one is an error."""
  channels = data.info(config.dataset).channels
  if config.get("channels") not in (None, channels):
    raise ValueError(f"config.channels={config.channels} but dataset {config.dataset!r} has "
                     f"{channels} channel(s); leave channels unset (None)")
  return channels


def build(config):
  """The algorithm and model a config describes (validates it before any data is loaded)."""
  model = generator.ResNetGenerator(config.image_size, image_channels(config), config.nz,
                                    config.ngf)
  loss_kwargs = dict(config.loss.get("kwargs", {}))
  objective = client.Objective(model, features.get_extractor(config.features),
                               losses.get_loss(config.loss.name, **loss_kwargs),
                               config.local.estimator)
  local = client.LocalConfig(**config.local)
  prism = rnd.Prism(objective, local, server.ServerConfig(config.mada, config.smoothing),
                    config.num_clients, config.get("clients_per_round"))
  return prism


def load_client_data(config):
  """Loads the dataset and splits its train part across clients."""
  splits = data.load(config.dataset, config.image_size, config.get("data_dir"),
                     config.get("download", False))
  train = splits["train"]
  parts = partition.partition(train.labels, config.num_clients, config.split,
                              config.partition_seed, config.divide, config.alpha,
                              config.min_client_size, config.get("unbalance", 0.0))
  return splits, parts, partition.to_client_data(train.images, parts)


def write_partition(config, labels, parts, workdir: str) -> dict:
  """Prints and saves the split: ``partition.json`` and the per-client ``partition.png``."""
  s = partition.summary(labels, parts, data.info(config.dataset).num_classes)
  s["split"] = config.split
  _write_json(os.path.join(workdir, "partition.json"), s)
  title = f"{config.dataset} {config.split}"
  title += {"shards": f" divide={config.divide}", "dirichlet": f" alpha={config.alpha}"}.get(
      config.split, "")
  visualize.save_label_distribution(np.array(s["label_histogram"]),
                                    os.path.join(workdir, "partition.png"), title)
  print(f"{title}: {config.num_clients} clients, samples per client "
        f"{min(s['counts'])}-{max(s['counts'])}\n{partition.format_summary(s)}")
  return s


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def train(config, workdir: str) -> dict:
  """Runs ``config.rounds`` PRISM rounds; returns the summary also written to workdir."""
  if os.path.exists(os.path.join(workdir, "config.json")):
    raise FileExistsError(f"workdir {workdir} already holds a run; pass another --workdir "
                          "(its outputs and checkpoints are left untouched)")
  prism = build(config)                                  # bad config: fail before any
  splits, parts, client_data = load_client_data(config)  # output is written
  model = prism.model
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  write_partition(config, splits["train"].labels, parts, workdir)

  mesh = rnd.client_mesh()
  client_data = rnd.shard_client_data(client_data, mesh)
  round_step = rnd.make_round_step(prism, mesh)
  key = jax.random.key(config.train_seed)
  k_init, k_rounds, k_eval, k_final = jax.random.split(key, 4)
  state = rnd.init_state(model, config.seed, k_init, config.score_std)
  n = masking.num_weights(state.scores)
  comm = communication.round_bits(n, prism.per_round)
  print(f"generator: {n:,} masked weights; upload {comm['bits_up_per_client']:,} bits/client/"
        f"round ({comm['bits_up_per_client'] / 8 / 1024:.1f} KiB)")

  z = jax.random.normal(k_eval, (config.num_samples, model.nz))
  weights = generator.init_weights(model, config.seed)
  sample = jax.jit(lambda w, s, k: generator.generate(model, w, s, z, k, "sample"))
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  open(metrics_path, "w").close()
  t_start, seconds = time.perf_counter(), []
  for r in range(config.rounds):
    t0 = time.perf_counter()
    new_state, m = round_step(state, client_data, jax.random.fold_in(k_rounds, r))
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not all(math.isfinite(v) for v in m.values()):
      bad = [k for k, v in m.items() if not math.isfinite(v)]
      raise FloatingPointError(
          f"round {r + 1}: non-finite {bad}; stopping. The last good state is in "
          f"{ckpt.directory} (round {ckpt.latest_step()})")
    state = new_state
    seconds.append(time.perf_counter() - t0)
    m.update(round=r + 1, seconds=seconds[-1], **comm)
    with open(metrics_path, "a") as f:
      f.write(json.dumps(m) + "\n")
    print(f"round {r + 1:4d}/{config.rounds}  loss {m['loss']:.4f}  "
          f"lambda {m['mada_lambda']:.3f}  density {m['density']:.3f}  "
          f"H(mask) {m['mask_entropy_bits']:.3f} bit/w  {m['seconds']:.1f}s", flush=True)
    last = r + 1 == config.rounds
    if config.sample_every and ((r + 1) % config.sample_every == 0 or last):
      visualize.save_grid(np.asarray(sample(weights, state.scores, jax.random.key(r))),
                          os.path.join(workdir, f"samples_r{r + 1:04d}.png"))
    if config.checkpoint_every and ((r + 1) % config.checkpoint_every == 0 or last):
      checkpoint.save(ckpt, r + 1, state)

  final = export.final_mask(k_final, state.scores)
  model_bytes = export.save_model(os.path.join(workdir, "model.npz"), model, config.seed, final)
  visualize.save_grid(np.asarray(generator.apply_binary(model, weights, final, z)),
                      os.path.join(workdir, "samples.png"))
  summary = {"rounds": config.rounds, "num_weights": n,
             "seconds_total": time.perf_counter() - t_start,
             "seconds_per_round": float(np.median(seconds[1:] or seconds or [0.0])),
             "final_loss": m["loss"] if config.rounds else None,
             "model_bytes": model_bytes, "dense_float32_bytes": communication.dense_bytes(n),
             **comm}
  summary["model_fraction_of_dense"] = model_bytes / summary["dense_float32_bytes"]
  _write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"done: {summary['seconds_total']:.0f}s; model {model_bytes:,} bytes = "
        f"{100 * summary['model_fraction_of_dense']:.2f}% of dense float32; outputs in {workdir}")
  return summary
