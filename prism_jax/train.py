"""The PRISM training loop: data -> partition -> rounds -> samples, metrics, checkpoint, export.

``train(config, workdir)`` runs one experiment described by an ``ml_collections`` config
(see ``experiments/configs/``) and writes everything it produced into ``workdir``:
``config.json``, ``partition.json`` / ``partition.png``, ``metrics.jsonl``, ``samples_rXXXX.png`` / ``samples.png``,
``checkpoints/`` (orbax), ``model.npz`` (seed + packed mask) and ``summary.json``.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import time

import jax
import numpy as np

from prism_jax import (baselines, checkpoint, client, coding, communication, data, dp, evaluation, export,
                       features, generator, losses, masking, partition, runlog, server,
                       visualize)
from prism_jax import round as rnd


def image_channels(config) -> int:
  """The dataset's channel count; a config that sets another one is an error."""
  channels = data.info(config.dataset).channels
  if config.get("channels") not in (None, channels):
    raise ValueError(f"config.channels={config.channels} but dataset {config.dataset!r} has "
                     f"{channels} channel(s); leave channels unset (None)")
  return channels


def dp_noise_std(config, num_weights: int) -> float:
  """The configured noise std, or the one calibrated to ``config.dp.epsilon`` over
  ``config.rounds`` rounds (:func:`prism_jax.dp.calibrate_noise`)."""
  cfg = config.get("dp") or {}
  delta, eps = cfg.get("delta", 1e-5), cfg.get("epsilon")
  dp.validate_target(eps if eps is not None else 1.0, delta)
  if eps is None:
    return config.local.dp_noise_std
  if config.local.dp_noise_std:
    raise ValueError("set either config.dp.epsilon (noise calibrated) or "
                     "config.local.dp_noise_std, not both")
  return dp.calibrate_noise(eps, delta, config.rounds, num_weights, cfg.get("sensitivity"),
                            cfg.get("accountant", "rdp"))


def build(config):
  """The algorithm a config describes, validated before any data is loaded or written."""
  model = generator.ResNetGenerator(config.image_size, image_channels(config), config.nz,
                                    config.ngf)
  fkw = dict(config.get("features_kwargs") or {})
  if config.features == "vgg19":
    fkw.setdefault("image_size", config.image_size)
  extractor = features.get_extractor(config.features, **fkw)
  loss_kwargs = dict(config.loss.get("kwargs", {}))
  objective = client.Objective(model, extractor,
                               losses.get_loss(config.loss.name, **loss_kwargs),
                               config.local.estimator)
  ev = config.get("eval") or {}
  if ev.get("every") and ev.get("num_samples", 1000) <= 5:
    raise ValueError(f"eval.num_samples must exceed the k=5 neighbours of precision/recall, "
                     f"got {ev.get('num_samples')}")
  n = masking.num_weights(jax.eval_shape(lambda: generator.init_weights(model, 0)))
  method = config.get("method", "prism")
  baselines.check_method(method)
  if method == "fedavg" and (config.get("dp") or {}).get("epsilon") is not None:
    raise ValueError("config.dp.epsilon is set but method 'fedavg' has no DP mechanism here")
  local = client.LocalConfig(**{**config.local, "dp_noise_std": dp_noise_std(config, n)})
  return rnd.Prism(objective, local, server.ServerConfig(config.mada, config.smoothing),
                   config.num_clients, config.get("clients_per_round"),
                   config.get("prism_alpha", 0.0), method=method,
                   fedpm_reset=config.get("fedpm_reset"))


def cache_dir(config) -> str:
  return os.path.expanduser(config.get("cache_dir") or os.environ.get(
      "PRISM_JAX_CACHE", "~/.cache/prism_jax"))


def with_real_stats(prism, config, client_data, parts):
  """Adds each client's real-feature (mean, var) when the loss needs them (cached)."""
  if not prism.objective.uses_stats:
    return client_data
  h = hashlib.sha1(np.concatenate(parts).astype(np.int64).tobytes())
  h.update(np.array([len(p) for p in parts]).tobytes())
  key = f"{config.dataset}-{config.image_size}-{h.hexdigest()[:12]}"
  t0 = time.perf_counter()
  mean, var = features.cached_client_stats(prism.objective.features,
                                           np.asarray(client_data.images),
                                           np.asarray(client_data.counts), cache_dir(config), key)
  print(f"real feature statistics: {mean.shape[0]} clients x {mean.shape[1]:,} features "
        f"({time.perf_counter() - t0:.1f}s)")
  return rnd.ClientData(client_data.images, client_data.counts, (mean, var))


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
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


# Config fields a resumed run may change (they do not change the computation).
RESUMABLE = ("rounds", "sample_every", "checkpoint_every", "keep_checkpoints", "eval", "coding",
             "cache_dir", "data_dir", "download")


def _check_resume(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  now = json.loads(json.dumps(config.to_dict()))
  diff = sorted(k for k in set(saved) | set(now)
                if k not in RESUMABLE and saved.get(k) != now.get(k))
  if (now.get("dp") or {}).get("epsilon") is not None and saved.get("rounds") != now.get("rounds"):
    diff.append("rounds (the DP noise is calibrated to the number of rounds)")
  if diff:
    raise ValueError(f"cannot resume {workdir}: its config differs in {diff}; resume with "
                     "the saved config.json or start a new --workdir")


def run_keys(train_seed: int):
  """``(k_init, k_rounds, k_eval, k_final)``: every key of a run, from its train seed (the
  simulator and a Flower deployment must derive them identically)."""
  return tuple(jax.random.split(jax.random.key(train_seed), 4))


def layer_density(scores) -> dict[str, float]:
  """Mean keep-probability per masked layer (TensorBoard ``mask/<layer>``)."""
  out = {}
  for path, s in jax.tree_util.tree_leaves_with_path(scores):
    name = "/".join(k.key for k in path[:-1])
    out[name] = float(np.mean(jax.nn.sigmoid(np.asarray(s, np.float32))))
  return out


def train(config, workdir: str, resume: bool = False) -> dict:
  """Runs rounds up to ``config.rounds``; returns the summary also written to workdir.

  With ``resume``, continues the run in ``workdir`` from its latest checkpoint and gives
  bit-identical scores to an uninterrupted run (randomness is a function of the round).
  """
  exists = os.path.exists(os.path.join(workdir, "config.json"))
  if exists and not resume:
    raise FileExistsError(f"workdir {workdir} already holds a run; pass --resume to continue "
                          "it or another --workdir (its outputs and checkpoints are left "
                          "untouched)")
  if resume and not exists:
    raise FileNotFoundError(f"--resume: no run in {workdir} (no config.json)")
  prism = build(config)                                  # bad config: fail before any
  splits, parts, client_data = load_client_data(config)  # output is written
  if resume:
    _check_resume(config, workdir)
  model = prism.model
  os.makedirs(workdir, exist_ok=True)
  k_init, k_rounds, k_eval, k_final = run_keys(config.train_seed)
  state = rnd.init_state(model, config.seed, k_init, config.score_std, prism)
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  start = 0
  if resume:
    if ckpt.latest_step() is not None:
      state = checkpoint.restore(ckpt, state)   # corrupt/incompatible: ValueError, no writes
      start = int(state.round)
    print(f"resuming {workdir} at round {start}")
  else:
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  print(config)
  write_partition(config, splits["train"].labels, parts, workdir)
  client_data = with_real_stats(prism, config, client_data, parts)

  mesh = rnd.client_mesh()
  client_data = rnd.shard_client_data(client_data, mesh)
  coding_cfg = config.get("coding") or {}
  coded = bool(coding_cfg.get("enabled")) and prism.sends_masks
  # The round replaces the state: donating it keeps one copy of scores and loss states.
  round_step = rnd.make_round_step(prism, mesh, with_uploads=coded, donate=True)
  n = masking.num_weights(state.scores)
  send_probs = prism.send_probs(state.scores)
  sends_bits = [not p for p in jax.tree.leaves(send_probs)] if send_probs else None
  n_prob = sum(x.size for p, x in zip(jax.tree.leaves(send_probs or {}),
                                      jax.tree.leaves(state.scores)) if p)
  comm = communication.round_bits(n, prism.per_round, n_prob)
  coder = concurrent.futures.ThreadPoolExecutor(1) if coded else None
  print(f"{prism.method}: generator with {n:,} weights; upload {comm['bits_up_per_client']:,} "
        f"bits/client/round ({comm['bits_up_per_client'] / 8 / 1024:.1f} KiB)")
  dp_cfg = config.get("dp") or {}
  sigma, delta = prism.local.dp_noise_std, dp_cfg.get("delta", 1e-5)

  def privacy(rounds_done):   # (epsilon, delta) spent so far, from the accountant
    if not sigma:
      return {}
    return {"dp_epsilon": dp.epsilon(sigma, n, rounds_done, delta, dp_cfg.get("sensitivity"),
                                     dp_cfg.get("accountant", "rdp")), "dp_delta": delta}

  if sigma:
    print(f"DP: noise std {sigma:.4g} on theta (multiplier "
          f"{dp.noise_multiplier(sigma, n, dp_cfg.get('sensitivity')):.4g}); epsilon after "
          f"{config.rounds} rounds {privacy(config.rounds)['dp_epsilon']:.4g} at delta {delta}")

  weights = generator.init_weights(model, config.seed)
  dense = not prism.sends_masks
  ev = config.get("eval") or {}
  evaluator = None
  if ev.get("every"):
    evaluator = evaluation.make_evaluator(
        model, splits, data.info(config.dataset).num_classes, k_eval, ev.get("num_samples", 1000),
        cache_dir(config), config.dataset, ev.get("inception_weights"),
        ev.get("domain_epochs", 3), ev.get("domain_train_examples"), dense=dense)
  z = jax.random.normal(k_eval, (config.num_samples, model.nz))
  sample = jax.jit(lambda w, s: generator.images(model, w, s, z, k_eval, dense))
  log = runlog.MetricsFile(os.path.join(workdir, "metrics.jsonl"), start if resume else None)
  tb = runlog.TensorBoard(os.path.join(workdir, "tb"), start)
  progress = runlog.Progress(config.rounds, start)
  t_start, seconds, eval_seconds, ckpt_seconds = time.perf_counter(), [], [], []

  def evaluate(r):
    t0 = time.perf_counter()
    out, _ = evaluator(weights, state.scores)
    eval_seconds.append(time.perf_counter() - t0)
    tb.scalars(out, r, "eval/")
    return out

  m = {}
  try:
    if evaluator is not None and start == 0 and not any(r.get("round") == 0
                                                         for r in log.rows()):
      m0 = evaluate(0)
      log.append({"round": 0, **m0})
      progress.write("round 0: " + "  ".join(f"{k} {v:.4g}" for k, v in m0.items()))
    for r in range(start, config.rounds):
      t0 = time.perf_counter()
      if coded:   # the shared model: the global theta this round's clients start from
        shared = coding.model_from_scores(state.scores, sends_bits, coding_cfg.get("floor", 1e-3))
      new_state, m, *uploads = round_step(state, client_data, jax.random.fold_in(k_rounds, r))
      if coded:   # host-side entropy coding of the uploads, overlapping the host work below
        packed, ids = jax.device_get(uploads[0])
        coding_job = coder.submit(coding.code_uploads, packed, ids, shared)
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      if not all(math.isfinite(v) for v in m.values()):
        bad = [k for k, v in m.items() if not math.isfinite(v)]
        raise FloatingPointError(
            f"round {r + 1}: non-finite {bad}; stopping. The last good state is in "
            f"{ckpt.directory} (round {ckpt.latest_step()}); resume from it with --resume "
            "after changing the config (e.g. a lower learning rate)")
      state = new_state
      seconds.append(time.perf_counter() - t0)
      m.update(round=r + 1, seconds=seconds[-1], **comm, **privacy(r + 1))
      last = r + 1 == config.rounds
      if evaluator is not None and ((r + 1) % ev["every"] == 0 or last):
        m.update(evaluate(r + 1))
      if coded:
        m.update(coding_job.result())
        m["coded_bits_up"] += communication.FLOAT_BITS * n_prob * prism.per_round
      log.append(m)
      tb.scalars({k: v for k, v in m.items() if k != "round" and "_fid" not in k
                  and not k.startswith(("domain_", "inception_"))}, r + 1, "train/")
      if not dense:
        tb.scalars({f"mask/{k}": v for k, v in layer_density(state.scores).items()}, r + 1)
      progress.update(r + 1, m)
      if config.sample_every and ((r + 1) % config.sample_every == 0 or last):
        images = np.asarray(sample(weights, state.scores))
        visualize.save_grid(images, os.path.join(workdir, f"samples_r{r + 1:04d}.png"))
        tb.image("samples", visualize.grid(images), r + 1)
      if config.checkpoint_every and ((r + 1) % config.checkpoint_every == 0 or last):
        t0 = time.perf_counter()
        checkpoint.save(ckpt, r + 1, state)
        ckpt_seconds.append(time.perf_counter() - t0)
  finally:
    if coder is not None:
      coder.shutdown()
    progress.close()
    tb.close()

  if dense:
    model_bytes = export.save_dense(os.path.join(workdir, "model.npz"), model, state.scores)
    final_images = sample(weights, state.scores)
  else:
    final = export.final_mask(k_final, state.scores)
    model_bytes = export.save_model(os.path.join(workdir, "model.npz"), model, config.seed, final)
    final_images = jax.jit(lambda w, m: generator.apply_binary(model, w, m, z))(weights, final)
  visualize.save_grid(np.asarray(final_images), os.path.join(workdir, "samples.png"))
  rows = log.rows()
  visualize.save_curves(rows, os.path.join(workdir, "curves.png"))
  summary = {"method": prism.method, "rounds": config.rounds, "num_weights": n, "resumed_at": start if resume else None,
             "seconds_total": time.perf_counter() - t_start,
             "seconds_per_round": float(np.median(seconds[1:] or seconds or [0.0])),
             "seconds_per_eval": float(np.median(eval_seconds)) if eval_seconds else None,
             "seconds_per_checkpoint": float(np.median(ckpt_seconds)) if ckpt_seconds else None,
             "final_loss": m.get("loss"),
             "model_bytes": model_bytes, "dense_float32_bytes": communication.dense_bytes(n),
             "dp_noise_std": sigma, **comm, **privacy(config.rounds)}
  summary.update({k: v for k, v in rows[-1].items() if k.startswith(("domain_", "inception_"))}
                 if rows else {})
  coded_rows = [row for row in rows if "coded_bits_per_weight" in row]
  if coded_rows:
    summary.update({f"coded_bits_per_weight_{w}": coded_rows[i]["coded_bits_per_weight"]
                    for w, i in (("first", 0), ("middle", len(coded_rows) // 2), ("last", -1))})
    summary["coding_seconds_per_round"] = float(np.median([row["coding_seconds"]
                                                           for row in coded_rows]))
  summary["model_fraction_of_dense"] = model_bytes / summary["dense_float32_bytes"]
  _write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"done: {summary['seconds_total']:.0f}s; model {model_bytes:,} bytes = "
        f"{100 * summary['model_fraction_of_dense']:.2f}% of dense float32; outputs in {workdir}")
  return summary
