"""The PRISM training loop: data -> partition -> rounds -> samples, metrics, checkpoint, export.

``train(config, workdir)`` runs one experiment described by an ``ml_collections`` config
(see ``experiments/configs/``) and writes everything it produced into ``workdir``:
``config.json``, ``partition.json`` / ``partition.png``, ``metrics.jsonl``, ``tb/``,
``samples_rXXXX.png`` / ``samples[_resampled|_threshold].png``, ``checkpoints/`` (orbax),
``model.npz`` (seed + packed mask) and ``summary.json``. It reads as a loop:
:func:`setup` (config, data, state, logs), then per round :func:`make_step`'s jitted round
followed by the periodic actions (evaluation, logging, sample grid, checkpoint), then
:func:`finish` (export, final grids, summary).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np

from prism_jax import (baselines, checkpoint, client, coding, communication, data, downlink, dp,
                       evaluation, export, features, generator, losses, masking, multihost,
                       partition, pbm, runlog, server, visualize)
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
  if eps is None or cfg.get("mechanism", "gaussian") == "pbm":
    return config.local.dp_noise_std
  if config.local.dp_noise_std:
    raise ValueError("set either config.dp.epsilon (noise calibrated) or "
                     "config.local.dp_noise_std, not both")
  return dp.calibrate_noise(eps, delta, config.rounds, num_weights, cfg.get("sensitivity"),
                            cfg.get("accountant", "rdp"))


DP_MECHANISMS = ("gaussian", "pbm")


def pbm_mechanism(config, num_weights: int):
  """The PBM parameters of a config (``dp.mechanism="pbm"``), ``b`` calibrated to
  ``dp.epsilon`` over ``config.rounds`` unless given; None for the other mechanisms."""
  cfg = config.get("dp") or {}
  kind = cfg.get("mechanism", "gaussian")
  if kind not in DP_MECHANISMS:
    raise ValueError(f"unknown dp.mechanism {kind!r}; choose one of {DP_MECHANISMS}")
  if kind != "pbm":
    return None
  if config.local.dp_noise_std:
    raise ValueError("dp.mechanism='pbm' replaces the Gaussian noise on theta: leave "
                     "local.dp_noise_std at 0")
  participants = config.get("clients_per_round") or config.num_clients
  clip_norm, coord_clip = pbm.clips(cfg.get("clip_rms", 0.05), num_weights,
                                    cfg.get("spread", 3.0))
  b = cfg.get("b")
  if b is None:
    if cfg.get("epsilon") is None:
      raise ValueError("dp.mechanism='pbm' needs dp.epsilon (b calibrated to it) or dp.b")
    b = pbm.calibrate(cfg["epsilon"], cfg.get("delta", 1e-5), config.rounds, participants,
                      clip_norm, coord_clip)
  elif cfg.get("epsilon") is not None:
    raise ValueError("set either dp.epsilon (b calibrated) or dp.b, not both")
  pbm.validate(b, clip_norm, coord_clip, participants)
  return pbm.Mechanism(b, clip_norm, coord_clip)


def build(config):
  """The algorithm a config describes, validated before any data is loaded or written."""
  model = generator.ResNetGenerator(config.image_size, image_channels(config), config.nz,
                                    config.ngf, input_fan=config.get("input_fan", "torch"))
  fkw = dict(config.get("features_kwargs") or {})
  if config.features in ("vgg19", "cnn"):
    fkw.setdefault("image_size", config.image_size)
  if config.features == "cnn":   # trained on the dataset's held-out split, cached
    fkw.update(dataset=config.dataset, cache_dir=cache_dir(config),
               data_dir=config.get("data_dir"))
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
  if local.dp_mode == "official" and local.dp_noise_std:
    raise ValueError("local.dp_mode='official' reproduces the official code's DP branch, which "
                     "discards its noise: it has no privacy guarantee, so dp.epsilon / "
                     "local.dp_noise_std cannot be set with it")
  server_cfg = server.ServerConfig(config.mada, config.smoothing,
                                   config.get("lambda_counts", "weights"))
  return rnd.Prism(objective, local, server_cfg, config.num_clients,
                   config.get("clients_per_round"),
                   config.get("prism_alpha", 0.0), config.get("client_chunk"), method=method,
                   fedpm_reset=config.get("fedpm_reset"), pbm=pbm_mechanism(config, n),
                   refine=refinement(config))


def refinement(config) -> rnd.Refine | None:
  """``config.refine``: from round ``start`` on, clients train on the loss ``name`` with
  ``kwargs``, for ``local_steps`` local steps when set (None: one loss throughout)."""
  rc = config.get("refine") or {}
  if rc.get("start") is None:
    return None
  return rnd.Refine(rc["start"], losses.get_loss(rc.get("name", "gaussian_mmd"),
                                                 **dict(rc.get("kwargs") or {})),
                    rc.get("reset_optimizer", True), rc.get("local_steps"))


def cache_dir(config) -> str:
  return os.path.expanduser(config.get("cache_dir") or os.environ.get(
      "PRISM_JAX_CACHE", "~/.cache/prism_jax"))


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
  # Batch-dependent features (official VGG19): real statistics over local-size batches.
  mean, var = features.cached_client_stats(
      extractor, np.asarray(client_data.images), np.asarray(client_data.counts),
      cache_dir(config), key, prism.local.batch_size if extractor.batch_dependent else 256)
  print(f"real feature statistics: {mean.shape[0]} clients x {mean.shape[1]:,} features "
        f"({time.perf_counter() - t0:.1f}s)")
  return rnd.ClientData(client_data.images, client_data.counts, (mean, var))


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


def placed_client_data(prism, config, images, parts, mesh) -> rnd.ClientData:
  """The clients' padded data and real-feature statistics on the mesh, each process building
  only the clients its devices hold (:func:`prism_jax.multihost.client_arrays`)."""
  n_max = max(len(p) for p in parts)

  def rows(start, stop):
    part = partition.to_client_data(images, parts[start:stop], n_max)
    return with_real_stats(prism, config, part, parts, start)

  sharding = rnd.client_sharding(mesh, len(parts))
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


# Config fields (dotted paths) added after runs were first saved, each with the test that a
# value keeps the computation such a run did (a saved run without the field resumes if it
# passes).
GREY = ("mnist", "mnist_offline", "fashion_mnist")
ADDED = {"refine": lambda v, c: (v or {}).get("start") is None,
         "refine.local_steps": lambda v, c: v is None,
         # fields added since: (value, whole config) -> the run computes what it did before
         "lambda_counts": lambda v, c: v == "weights" or not c.get("mada", True),
         "local.sampling": lambda v, c: v == "uniform" or c["loss"]["name"] == "gfmn",
         "features_kwargs.layers": lambda v, c: (
             v == "last" or c["features_kwargs"].get("num_layers", 16) == 16),
         "features_kwargs.fake_range": lambda v, c: v == "same" or c["dataset"] in GREY}


def _without_added(saved: dict, now: dict) -> dict:
  """``now`` without the :data:`ADDED` fields that ``saved`` lacks and that keep its run."""
  now = json.loads(json.dumps(now))
  for path, keeps in ADDED.items():
    *parents, leaf = path.split(".")
    s, n = saved, now
    for p in parents:
      s, n = s.get(p), n.get(p)
      if not (isinstance(s, dict) and isinstance(n, dict)):
        break
    else:
      if leaf not in s and leaf in n and keeps(n[leaf], now):
        del n[leaf]
  return now


def _check_resume(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  now = _without_added(saved, config.to_dict())
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


@dataclasses.dataclass
class Run:
  """A training run between rounds: what :func:`setup` built and the loop updates."""
  config: Any
  workdir: str
  prism: rnd.Prism
  splits: dict
  client_data: rnd.ClientData
  state: rnd.ServerState
  start: int                 # first round to run (> 0 when resumed)
  resumed: bool
  keys: tuple                # run_keys(train_seed): (k_init, k_rounds, k_eval, k_final)
  ckpt: Any                  # orbax CheckpointManager
  weights: Any               # the frozen weights (regenerated from config.seed)
  comm: dict                 # bits per round (communication.round_bits)
  main: bool = True          # whether this process writes the files (multihost.is_main)
  ledger: downlink.Ledger = None   # downlink bookkeeping (coded runs)
  log: runlog.MetricsFile = None
  tb: runlog.TensorBoard = None
  progress: runlog.Progress = None
  timings: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))

  @property
  def dense(self) -> bool:
    return not self.prism.sends_masks

  def timed(self, name: str):
    """Context manager that records the seconds of one action under ``name``."""
    return _Timer(self.timings[name])

  def privacy(self, rounds_done: int) -> dict:
    """``dp_epsilon`` / ``dp_delta`` spent after ``rounds_done`` rounds (empty without DP)."""
    sigma, dp_cfg = self.prism.local.dp_noise_std, self.config.get("dp") or {}
    delta, mech = dp_cfg.get("delta", 1e-5), self.prism.pbm
    if mech is not None:
      return {"dp_epsilon": pbm.epsilon(self.prism.per_round, mech.b, mech.clip_norm,
                                        mech.coord_clip, rounds_done, delta), "dp_delta": delta}
    if not sigma:
      return {}
    return {"dp_epsilon": dp.epsilon(sigma, masking.num_weights(self.state.scores),
                                     rounds_done, delta, dp_cfg.get("sensitivity"),
                                     dp_cfg.get("accountant", "rdp")), "dp_delta": delta}


class _Timer:
  def __init__(self, into: list):
    self.into = into

  def __enter__(self):
    self.t0 = time.perf_counter()

  def __exit__(self, *exc):
    self.into.append(time.perf_counter() - self.t0)


def setup(config, workdir: str, resume: bool = False) -> Run:
  """Validates the config, loads and splits the data, builds (or restores) the round state
  and opens the run's logs. A bad config or a corrupt checkpoint fails before any write."""
  exists = os.path.exists(os.path.join(workdir, "config.json"))
  if exists and not resume:
    raise FileExistsError(f"workdir {workdir} already holds a run; pass --resume to continue "
                          "it or another --workdir (its outputs and checkpoints are left "
                          "untouched)")
  if resume and not exists:
    raise FileNotFoundError(f"--resume: no run in {workdir} (no config.json)")
  prism = build(config)                  # bad config: fail before any output is written
  splits, parts = load_splits(config)
  if resume:
    _check_resume(config, workdir)
  main = multihost.is_main()             # with several processes, process 0 writes the files
  multihost.barrier("prism_jax.setup")   # every process checked the workdir before any write
  os.makedirs(workdir, exist_ok=True)
  keys, mesh = run_keys(config.train_seed), rnd.client_mesh()
  state = rnd.init_state(prism.model, config.seed, keys[0], config.score_std, prism)
  state = multihost.put(state, rnd.state_shardings(state, mesh, prism.num_clients))
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  start = 0
  if resume:
    if ckpt.latest_step() is not None:
      state = checkpoint.restore(ckpt, state)   # corrupt/incompatible: ValueError, no writes
      start = int(multihost.to_host(state.round))
    print(f"resuming {workdir} at round {start}")
  elif main:
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
  if main:
    print(config)
    write_partition(config, splits["train"].labels, parts, workdir)
  client_data = placed_client_data(prism, config, splits["train"].images, parts, mesh)
  n = masking.num_weights(state.scores)
  comm = communication.round_bits(n, prism.per_round, _num_prob_weights(prism, state.scores))
  if prism.pbm is not None:   # one bit per rotated (padded) coordinate
    up = pbm.padded_size(n)
    comm.update(bits_up_per_client=up, bits_up=up * prism.per_round)
  run = Run(config, workdir, prism, splits, client_data, state, start, resume, keys, ckpt,
            generator.init_weights(prism.model, config.seed), comm, main)
  run.ledger = load_ledger(workdir, start, n, prism.num_clients)
  if main:
    run.log = runlog.MetricsFile(os.path.join(workdir, "metrics.jsonl"),
                                 start if resume else None)
    run.tb = runlog.TensorBoard(os.path.join(workdir, "tb"), start)
    run.progress = runlog.Progress(config.rounds, start)
  else:
    run.log = run.tb = run.progress = runlog.Silent()
  print(f"{prism.method}: generator with {n:,} weights; upload {comm['bits_up_per_client']:,} "
        f"bits/client/round ({comm['bits_up_per_client'] / 8 / 1024:.1f} KiB)")
  if prism.pbm is not None:
    mech = prism.pbm
    print(f"DP (Poisson binomial mechanism): b {mech.b:.4g}, update clip C {mech.clip_norm:.4g},"
          f" coordinate clip c {mech.coord_clip:.4g}, {prism.per_round} clients summed per "
          f"round; epsilon after {config.rounds} rounds "
          f"{run.privacy(config.rounds)['dp_epsilon']:.4g} at delta "
          f"{(config.get('dp') or {}).get('delta', 1e-5)}")
  if prism.local.dp_noise_std:
    dp_cfg = config.get("dp") or {}
    print(f"DP: noise std {prism.local.dp_noise_std:.4g} on theta (multiplier "
          f"{dp.noise_multiplier(prism.local.dp_noise_std, n, dp_cfg.get('sensitivity')):.4g});"
          f" epsilon after {config.rounds} rounds {run.privacy(config.rounds)['dp_epsilon']:.4g}"
          f" at delta {dp_cfg.get('delta', 1e-5)}")
  return run


LEDGER = "downlink.json"


def load_ledger(workdir: str, start: int, num_weights: int, num_clients: int):
  """The downlink ledger saved with the checkpoint of round ``start``; a fresh one at round 0.
  Without a matching saved ledger every client is counted as needing the full scores."""
  if start == 0:
    return downlink.Ledger(num_weights)
  try:
    with open(os.path.join(workdir, LEDGER)) as f:
      saved = json.load(f)
    if saved.get("round") == start:
      return downlink.Ledger.from_dict(saved)
  except (OSError, ValueError, KeyError):
    pass
  return downlink.Ledger(num_weights, [0] * start, {c: -1 for c in range(num_clients)})


def save_ledger(run: "Run", r: int) -> None:
  if run.ledger is not None and run.main:
    _write_json(os.path.join(run.workdir, LEDGER), {"round": r, **run.ledger.to_dict()})


def _num_prob_weights(prism: rnd.Prism, scores) -> int:
  """Weights whose upload is a float32 probability (PRISM-alpha's last layers)."""
  send_probs = prism.send_probs(scores)
  return sum(x.size for p, x in zip(jax.tree.leaves(send_probs or {}),
                                    jax.tree.leaves(scores)) if p)


def make_step(run: Run):
  """``step(state, r) -> (state, metrics)``: the jitted round (state donated), its metrics
  on the host with the round's bits and privacy spent, and, when enabled, both directions
  entropy-coded on a host thread while the device runs: the uploads (``coded_bits_up``
  etc.) and the broadcast with what each participant had to be sent
  (``coded_bits_down`` etc., :mod:`prism_jax.downlink`)."""
  prism, config = run.prism, run.config
  coding_cfg = config.get("coding") or {}
  # The same on every process. PBM's bits are fair coins give or take b: nothing to code.
  coded = bool(coding_cfg.get("enabled")) and prism.sends_masks and prism.pbm is None
  round_step = rnd.make_round_step(prism, rnd.client_mesh(), with_uploads=coded, donate=True)
  send_probs = prism.send_probs(run.state.scores)
  sends_bits = [not p for p in jax.tree.leaves(send_probs)] if send_probs else None
  bit_leaves = sends_bits or [True] * len(jax.tree.leaves(run.state.scores))
  n_prob = _num_prob_weights(prism, run.state.scores)
  floor = coding_cfg.get("floor", 1e-3)
  coder = concurrent.futures.ThreadPoolExecutor(1) if coded and run.main else None

  def code(packed, ids, bcast, prev_scores, r):
    shared = coding.model_from_scores(prev_scores, sends_bits, floor)
    m = coding.code_uploads(packed, ids, shared)
    m.update(downlink.code_round(run.ledger, bcast, r + 1, prev_scores, ids, bit_leaves, floor))
    return m

  def step(state, r: int):
    t0 = time.perf_counter()
    if coder:   # the global scores this round's clients start from: the coding model
      prev_scores = multihost.to_host(state.scores)
    new_state, m, *uploads = round_step(state, run.client_data,
                                        jax.random.fold_in(run.keys[1], r))
    if coder:   # host-side entropy coding, overlapping the host work below
      packed, ids, bcast = multihost.to_host(uploads[0])
      coding_job = coder.submit(code, packed, ids, bcast, prev_scores, r)
    m = {k: float(v) for k, v in multihost.to_host(m).items()}
    if not all(math.isfinite(v) for v in m.values()):
      bad = [k for k, v in m.items() if not math.isfinite(v)]
      raise FloatingPointError(
          f"round {r + 1}: non-finite {bad}; stopping. The last good state is in "
          f"{run.ckpt.directory} (round {run.ckpt.latest_step()}); resume from it with "
          "--resume after changing the config (e.g. a lower learning rate)")
    if coder:
      m.update(coding_job.result())
      m["coded_bits_up"] += communication.FLOAT_BITS * n_prob * prism.per_round
      m["coded_bits_total"] = m["coded_bits_up"] + m["coded_bits_down"]
    run.timings["round"].append(time.perf_counter() - t0)
    m.update(round=r + 1, seconds=run.timings["round"][-1], **run.comm)
    return new_state, m

  step.close = coder.shutdown if coder else (lambda: None)
  return step


def _due(every: int | None, r: int, rounds: int) -> bool:
  return bool(every) and (r % every == 0 or r == rounds)


def make_evaluate(run: Run):
  """The periodic evaluation (``config.eval.every`` rounds and the last; None when off):
  ``evaluate(r, state) -> metrics`` of every configured view of the model."""
  ev, config = run.config.get("eval") or {}, run.config
  if not ev.get("every") or not run.main:
    return None
  _, _, k_eval, k_final = run.keys
  evaluator = evaluation.make_evaluator(
      run.prism.model, run.splits, data.info(config.dataset).num_classes, k_eval,
      ev.get("num_samples", 1000), cache_dir(config), config.dataset,
      ev.get("inception_weights"), ev.get("domain_epochs", 3), ev.get("domain_train_examples"),
      dense=run.dense, mask_key=k_final, modes=tuple(ev.get("modes") or evaluation.MODES),
      legibility=ev.get("legibility", False))

  def evaluate(r: int, state) -> dict:
    with run.timed("eval"):
      out, _ = evaluator(run.weights, multihost.to_host(state.scores))
    run.tb.scalars(out, r, "eval/")
    return out
  evaluate.every = ev["every"]
  return evaluate


def grid_noise(run: Run) -> jax.Array:
  """The fixed noise batch of every sample grid of a run."""
  return jax.random.normal(run.keys[2], (run.config.num_samples, run.prism.model.nz))


def save_sample_grid(run: Run, r: int, state) -> None:
  """The periodic sample grid (``samples_rXXXX.png`` and TensorBoard): the model's fixed
  mask (the one exported if the run stopped here) on the fixed noise batch."""
  if not run.main:
    return
  images = evaluation.sample(run.prism.model, run.weights, multihost.to_host(state.scores),
                             grid_noise(run), run.keys[3], "fixed", run.dense)
  visualize.save_grid(images, os.path.join(run.workdir, f"samples_r{r:04d}.png"))
  run.tb.image("samples", visualize.grid(images), r)


def log_round(run: Run, r: int, m: dict) -> None:
  """One round's metrics to metrics.jsonl, TensorBoard (train/, per-layer mask/) and the
  progress display."""
  if not run.main:
    return
  run.log.append(m)
  run.tb.scalars({k: v for k, v in m.items() if k != "round"
                  and not k.startswith(("domain_", "inception_"))}, r, "train/")
  if not run.dense:
    density = layer_density(multihost.to_host(run.state.scores))
    run.tb.scalars({f"mask/{k}": v for k, v in density.items()}, r)
  run.progress.update(r, m)


def train(config, workdir: str, resume: bool = False) -> dict:
  """Runs rounds up to ``config.rounds``; returns the summary also written to workdir.

  With ``resume``, continues the run in ``workdir`` from its latest checkpoint and gives
  bit-identical scores to an uninterrupted run (randomness is a function of the round).
  """
  run = setup(config, workdir, resume)
  t_start = time.perf_counter()
  step, evaluate = make_step(run), make_evaluate(run)
  try:
    if evaluate and run.start == 0 and not any(row.get("round") == 0 for row in run.log.rows()):
      m0 = evaluate(0, run.state)
      run.log.append({"round": 0, **m0})
      run.progress.write("round 0: " + "  ".join(f"{k} {v:.4g}" for k, v in m0.items()))
    for r in range(run.start + 1, config.rounds + 1):
      run.state, m = step(run.state, r - 1)
      m.update(run.privacy(r))
      if evaluate and _due(evaluate.every, r, config.rounds):
        m.update(evaluate(r, run.state))
      log_round(run, r, m)
      if _due(config.sample_every, r, config.rounds):
        save_sample_grid(run, r, run.state)
      if _due(config.checkpoint_every, r, config.rounds):
        with run.timed("checkpoint"):
          checkpoint.save(run.ckpt, r, run.state)   # every process (orbax)
          save_ledger(run, r)
  finally:
    step.close()
    run.progress.close()
    run.tb.close()
  return finish(run, time.perf_counter() - t_start)


def downlink_summary(rows: list, per_round: int, num_weights: int) -> dict:
  """Both directions over the coded rounds: the downlink per client per weight (first,
  last, mean), the total coded bits and their share of dense FedAvg's 64 bits per weight
  per client per round (32 up + 32 down)."""
  rows = [row for row in rows if "coded_bits_down" in row]
  if not rows:
    return {}
  down = [row["coded_bits_down_per_weight"] for row in rows]
  total = sum(row["coded_bits_total"] for row in rows)
  dense = len(rows) * per_round * num_weights * 2 * communication.FLOAT_BITS
  return {"coded_bits_down_per_weight_first": down[0],
          "coded_bits_down_per_weight_last": down[-1],
          "coded_bits_down_per_weight_mean": float(np.mean(down)),
          "coded_bits_total": total, "coded_total_fraction_of_dense_fedavg": total / dense,
          "downlink_seconds_per_round": float(np.median([r["downlink_seconds"] for r in rows]))}


def finish(run: Run, seconds_total: float) -> dict:
  """The end of a run: the exported model (seed + mask bits, or dense weights), the final
  grids of each view of the model, curves and ``summary.json`` (process 0; others: {})."""
  if not run.main:
    return {}
  model, workdir, k_final = run.prism.model, run.workdir, run.keys[3]
  state = run.state.replace(scores=multihost.to_host(run.state.scores))
  z = grid_noise(run)
  path = os.path.join(workdir, "model.npz")
  if run.dense:
    model_bytes = export.save_dense(path, model, state.scores)
  else:
    final = export.final_mask(k_final, state.scores)
    model_bytes = export.save_model(path, model, run.config.seed, final)
    for mode in ("resampled", "threshold"):   # the other two views of the final theta
      visualize.save_grid(evaluation.sample(model, run.weights, state.scores, z, k_final, mode),
                          os.path.join(workdir, f"samples_{mode}.png"))
  # The fixed view: exactly the exported model (dense: the trained weights).
  visualize.save_grid(evaluation.sample(model, run.weights, state.scores, z, k_final, "fixed",
                                        run.dense), os.path.join(workdir, "samples.png"))
  rows = run.log.rows()
  visualize.save_curves(rows, os.path.join(workdir, "curves.png"))
  t, n = run.timings, masking.num_weights(state.scores)
  median = lambda xs: float(np.median(xs)) if xs else None   # noqa: E731
  summary = {"method": run.prism.method, "rounds": run.config.rounds, "num_weights": n,
             "resumed_at": run.start if run.resumed else None, "seconds_total": seconds_total,
             "seconds_per_round": median(t["round"][1:] or t["round"]) or 0.0,
             "seconds_per_eval": median(t["eval"]),
             "seconds_per_checkpoint": median(t["checkpoint"]),
             "final_loss": rows[-1].get("loss") if rows else None,
             "model_bytes": model_bytes, "dense_float32_bytes": communication.dense_bytes(n),
             "dp_noise_std": run.prism.local.dp_noise_std, **run.comm,
             **run.privacy(run.config.rounds)}
  summary.update({k: v for k, v in rows[-1].items()
                  if k.startswith(("domain_", "inception_", "legibility_"))}
                 if rows else {})
  coded_rows = [row for row in rows if "coded_bits_per_weight" in row]
  if coded_rows:
    summary.update({f"coded_bits_per_weight_{w}": coded_rows[i]["coded_bits_per_weight"]
                    for w, i in (("first", 0), ("middle", len(coded_rows) // 2), ("last", -1))})
    summary["coding_seconds_per_round"] = median([row["coding_seconds"] for row in coded_rows])
    summary.update(downlink_summary(coded_rows, run.prism.per_round, n))
  summary["model_fraction_of_dense"] = model_bytes / summary["dense_float32_bytes"]
  _write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"done: {seconds_total:.0f}s; model {model_bytes:,} bytes = "
        f"{100 * summary['model_fraction_of_dense']:.2f}% of dense float32; outputs in {workdir}")
  return summary
