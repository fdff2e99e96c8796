"""The clients' data of a run: the dataset split across clients (:mod:`prism_jax.partition`),
padded into :class:`~prism_jax.data.ClientData`, with each client's real-feature
statistics when the loss needs them, placed on the device mesh (each process builds only
the clients its devices hold).
"""
from __future__ import annotations

import hashlib
import os
import time

import jax
import numpy as np

from prism_jax import data, features, multihost, partition, visualize
from prism_jax.configure import cache_dir
from prism_jax.data import ClientData
from prism_jax.rundir import write_json
from prism_jax.sharding import client_sharding


def with_real_stats(prism, config, client_data, parts, first: int = 0):
  """Adds each client's real-feature (mean, var) when the loss needs them (cached).
  ``client_data`` may hold clients ``first, first + 1, ...`` of ``parts`` only (one host's)."""
  if not prism.objective.uses_stats:
    return client_data
  h = hashlib.sha1(np.concatenate(parts).astype(np.int64).tobytes())
  h.update(np.array([len(p) for p in parts]).tobytes())
  key = f"{config.dataset}-{config.image_size}-{h.hexdigest()[:12]}"
  if client_data.num_clients != len(parts):
    key += f"-c{first}-{first + client_data.num_clients}"
  t0 = time.perf_counter()
  extractor = prism.objective.features
  print(f"real feature statistics of {client_data.num_clients} clients ({extractor.name}; "
        "cached after the first run)...", flush=True)
  # Batch-dependent features (official VGG19): real statistics over local-size batches.
  mean, var = features.cached_client_stats(
      extractor, np.asarray(client_data.images), np.asarray(client_data.counts),
      cache_dir(config), key, prism.local.batch_size if extractor.batch_dependent else 256)
  print(f"real feature statistics: {mean.shape[0]} clients x {mean.shape[1]:,} features "
        f"({time.perf_counter() - t0:.1f}s)")
  return ClientData(client_data.images, client_data.counts, (mean, var))


def load_splits(config):
  """The dataset and its train part's split across clients (index arrays)."""
  splits = data.load(config.dataset, config.image_size, config.get("data_dir"),
                     config.get("download", False))
  train = splits["train"]
  parts = partition.partition(train.labels, config.num_clients, config.split,
                              config.partition_seed, config.divide, config.alpha,
                              config.min_client_size, config.get("unbalance", 0.0))
  return splits, parts


def load_client_data(config):
  """Loads the dataset and splits its train part across clients, all in this process."""
  splits, parts = load_splits(config)
  return splits, parts, partition.to_client_data(splits["train"].images, parts)


def placed_client_data(prism, config, images, parts, mesh) -> ClientData:
  """The clients' padded data and real-feature statistics on the mesh, each process building
  only the clients its devices hold (:func:`prism_jax.multihost.client_arrays`)."""
  n_max = max(len(p) for p in parts)

  def rows(start, stop):
    part = partition.to_client_data(images, parts[start:stop], n_max)
    return with_real_stats(prism, config, part, parts, start)

  sharding = client_sharding(mesh, len(parts))
  out = multihost.client_arrays(len(parts), rows, sharding)
  held = []                              # this process's devices' rows, contiguous merged
  for a, b in multihost.local_rows(len(parts), sharding):
    held[-1:] = [(held[-1][0], b)] if held and held[-1][1] == a else held[-1:] + [(a, b)]
  nbytes = sum(s.data.nbytes for x in jax.tree.leaves(out) for s in x.addressable_shards)
  nbytes /= jax.local_device_count()
  print(f"process {jax.process_index()}/{jax.process_count()}: clients "
        f"{', '.join(f'{a}-{b - 1}' for a, b in held)} of {len(parts)}, images "
        f"{list(out.images.addressable_shards[0].data.shape)} per device "
        f"({nbytes / 2**20:.1f} MiB)")
  return out


def write_partition(config, labels, parts, workdir: str) -> dict:
  """Prints and saves the split: ``partition.json`` and the per-client ``partition.png``."""
  s = partition.summary(labels, parts, data.info(config.dataset).num_classes)
  s["split"] = config.split
  write_json(os.path.join(workdir, "partition.json"), s)
  title = f"{config.dataset} {config.split}"
  title += {"shards": f" divide={config.divide}", "dirichlet": f" alpha={config.alpha}"}.get(
      config.split, "")
  visualize.save_label_distribution(np.array(s["label_histogram"]),
                                    os.path.join(workdir, "partition.png"), title)
  print(f"{title}: {config.num_clients} clients, samples per client "
        f"{min(s['counts'])}-{max(s['counts'])}\n{partition.format_summary(s)}")
  return s
