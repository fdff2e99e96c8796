"""The training loop: data -> partition -> rounds -> samples, metrics, checkpoint, export.

``train(config, workdir)`` runs one experiment described by an ``ml_collections`` config
(see ``experiments/configs/``) and writes everything it produced into ``workdir``:
``config.json``, ``partition.json`` / ``partition.png``, ``metrics.jsonl``, ``tb/``,
``samples_rXXXX.png`` / ``samples[_resampled|_threshold].png``, ``checkpoints/`` (orbax),
``model.npz`` (seed + packed mask) and ``summary.json``. It reads as a loop:
:func:`setup` (config, data, state, logs), then per round :func:`make_step`'s jitted round
followed by the periodic actions (evaluation, logging, sample grid, checkpoint), then
:func:`finish` (export, final grids, summary). The layers below it: :mod:`prism_jax.configure`
(config -> algorithm), :mod:`prism_jax.client_data` (the clients' data),
:mod:`prism_jax.rundir` (resume checks, ledger) and :mod:`prism_jax.round` (the round).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np

from prism_jax import (checkpoint, client_data, coding, communication, data, downlink,
                       evaluation, export, generator, masking, multihost, runlog, visualize)
from prism_jax import round as rnd
from prism_jax.algorithm import Prism, ServerState, init_state
from prism_jax.configure import build, cache_dir, run_keys
from prism_jax.data import ClientData
from prism_jax.rundir import check_resume, load_ledger, save_ledger, write_json
from prism_jax.sharding import client_mesh, state_shardings


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
  prism: Prism
  splits: dict
  client_data: ClientData
  state: ServerState
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
    return not self.prism.rule.sends_masks

  def timed(self, name: str):
    """Context manager that records the seconds of one action under ``name``."""
    return _Timer(self.timings[name])

  def privacy(self, rounds_done: int) -> dict:
    """``dp_epsilon`` / ``dp_delta`` spent after ``rounds_done`` rounds (empty without DP)."""
    delta = (self.config.get("dp") or {}).get("delta", 1e-5)
    eps = self.prism.rule.epsilon([self.prism.per_round] * rounds_done, delta)
    return {} if eps is None else {"dp_epsilon": eps, "dp_delta": delta}


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
  splits, parts = client_data.load_splits(config)
  if resume:
    check_resume(config, workdir)
  main = multihost.is_main()             # with several processes, process 0 writes the files
  multihost.barrier("prism_jax.setup")   # every process checked the workdir before any write
  os.makedirs(workdir, exist_ok=True)
  keys, mesh = run_keys(config.train_seed), client_mesh()
  state = init_state(prism.model, config.seed, keys[0], config.score_std, prism)
  state = multihost.put(state, state_shardings(state, mesh, prism.num_clients))
  ckpt = checkpoint.manager(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  start = 0
  if resume:
    if ckpt.latest_step() is not None:
      state = checkpoint.restore(ckpt, state)   # corrupt/incompatible: ValueError, no writes
      start = int(multihost.to_host(state.round))
    print(f"resuming {workdir} at round {start}")
  elif main:
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
  if main:
    print(config)
    client_data.write_partition(config, splits["train"].labels, parts, workdir)
  placed = client_data.placed_client_data(prism, config, splits["train"].images, parts, mesh)
  n = masking.num_weights(state.scores)
  comm = communication.round_bits(n, prism.per_round, prism.num_prob_weights,
                                  prism.rule.bits_up(n, prism.num_prob_weights))
  run = Run(config, workdir, prism, splits, placed, state, start, resume, keys, ckpt,
            generator.init_weights(prism.model, config.seed), comm, main,
            load_ledger(workdir, start, n, prism.num_clients))
  open_logs(run)
  print(f"{prism.method}: generator with {n:,} weights; upload {comm['bits_up_per_client']:,} "
        f"bits/client/round ({comm['bits_up_per_client'] / 8 / 1024:.1f} KiB)")
  if prism.rule.privacy is not None:
    spent = run.privacy(config.rounds)   # one accountant pass
    print(f"DP: {prism.rule.privacy.describe()}; {prism.per_round} clients per round; "
          f"epsilon after {config.rounds} rounds {spent['dp_epsilon']:.4g} "
          f"at delta {spent['dp_delta']}")
  return run


def open_logs(run: Run) -> None:
  """metrics.jsonl, TensorBoard and the progress display (process 0; others: silent)."""
  if run.main:
    run.log = runlog.MetricsFile(os.path.join(run.workdir, "metrics.jsonl"),
                                 run.start if run.resumed else None)
    run.tb = runlog.TensorBoard(os.path.join(run.workdir, "tb"), run.start)
    run.progress = runlog.Progress(run.config.rounds, run.start)
  else:
    run.log = run.tb = run.progress = runlog.Silent()


def make_step(run: Run):
  """``step(state, r) -> (state, metrics)``: the jitted round (state donated), its metrics
  on the host with the round's bits and privacy spent, and, when enabled, both directions
  entropy-coded on a host thread while the device runs: the uploads (``coded_bits_up``
  etc.) and the broadcast with what each participant had to be sent
  (``coded_bits_down`` etc., :mod:`prism_jax.downlink`)."""
  prism, config = run.prism, run.config
  coding_cfg = config.get("coding") or {}
  # The same on every process. PBM's bits are fair coins give or take b: nothing to code.
  coded = bool(coding_cfg.get("enabled")) and prism.rule.codable
  round_step = rnd.make_round_step(prism, client_mesh(), with_uploads=coded, donate=True)
  bit_leaves, n_prob = prism.bit_leaves, prism.num_prob_weights
  sends_bits = None if prism.send_probs() is None else bit_leaves
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
    if run.start < config.rounds:   # else the first lines would wait silently for XLA
      run.progress.write(f"round {run.start + 1} compiles the round step first (tens of "
                         "seconds on a CPU; cached for later runs)")
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
          if run.ledger is not None and run.main:
            save_ledger(run.workdir, run.ledger, r)
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
  write_json(os.path.join(workdir, "summary.json"), summary)
  print(f"done: {seconds_total:.0f}s; model {model_bytes:,} bytes = "
        f"{100 * summary['model_fraction_of_dense']:.2f}% of dense float32; outputs in {workdir}")
  return summary
