"""RESULTS-official.md: prism-jax and the official code on the same setting, and MADA in each.

Read from the run directories of ``python -m experiments.results --suite=official`` (each
run's ``metrics.jsonl``: the evaluated rounds' domain-FID of the fixed mask, the exported
model, and of resampled masks, the official protocol); nothing is typed by hand.
"""
from __future__ import annotations

import json
import os
import statistics
import time

MODES = ("fixed", "resampled")
IMPLS = ("prism_jax", "official")


def evaluated(workdir: str) -> dict[int, dict]:
  """Round -> metrics of the evaluated rounds (a round redone after a crash: its last row)."""
  rows = {}
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          if "domain_fid_fixed" in r and r.get("round", 0) > 0:
            rows[int(r["round"])] = r
  except OSError:
    pass
  return rows


def _mean_sd(values: list[float]) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:.1f} (1 seed)"
  return (f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} "
          f"({', '.join(f'{v:.1f}' for v in values)})")


def _group(runs, runs_dir):
  """``(impl, mada) -> [(seed, {round: row}, finished)]``."""
  out = {}
  for run in runs:
    mada = dict(run.overrides)["mada"]
    workdir = os.path.join(runs_dir, run.name)
    out.setdefault((run.runner, mada), []).append(
        (run.seed, evaluated(workdir), os.path.exists(os.path.join(workdir, "summary.json"))))
  return out


def draws(runs, runs_dir) -> dict:
  """``(impl, mada) -> [fixed-mask domain-FID of each mask draw]`` from the final models
  (``benchmarks.official_draws``), where measured."""
  out = {}
  for run in runs:
    try:
      with open(os.path.join(runs_dir, run.name, "fixed_draws.json")) as f:
        fids = json.load(f)["domain_fid_fixed"]
    except (OSError, ValueError, KeyError):
      continue
    out.setdefault((run.runner, dict(run.overrides)["mada"]), []).append(fids)
  return out


def draws_verdicts(d: dict) -> list[str]:
  """The implementations, and MADA within each, compared over every draw of every seed."""
  pooled = {k: [v for fids in per_run for v in fids] for k, per_run in d.items()}
  lines = []
  for a, b, what in ((("prism_jax", True), ("official", True), "with MADA, prism-jax - official"),
                     (("prism_jax", False), ("official", False),
                      "without MADA, prism-jax - official"),
                     (("prism_jax", True), ("prism_jax", False), "prism-jax, MADA - no MADA"),
                     (("official", True), ("official", False), "official, MADA - no MADA")):
    if a in pooled and b in pooled and len(pooled[a]) > 1 and len(pooled[b]) > 1:
      diff = statistics.mean(pooled[a]) - statistics.mean(pooled[b])
      se = (statistics.variance(pooled[a]) / len(pooled[a]) +
            statistics.variance(pooled[b]) / len(pooled[b])) ** 0.5
      verdict = "within" if abs(diff) <= 2 * se else "beyond"
      lines.append(f"- Over the draws, {what}: {diff:+.1f} (standard error {se:.1f}; "
                   f"{verdict} two standard errors).")
  return lines


def draws_table(d: dict) -> list[str]:
  if not d:
    return []
  lines = ["| implementation | MADA | runs | draws per run | fixed-mask domain-FID over the "
           "draws: mean ± sd | per run: mean (min-max) |", "|---|---|---|---|---|---|"]
  for (impl, mada), per_run in sorted(d.items(), key=lambda kv: (IMPLS.index(kv[0][0]),
                                                                not kv[0][1])):
    every = [v for fids in per_run for v in fids]
    runs = "; ".join(f"{statistics.mean(f):.1f} ({min(f):.1f}-{max(f):.1f})" for f in per_run)
    lines.append(f"| {impl} | {'yes' if mada else 'no'} | {len(per_run)} | "
                 f"{len(per_run[0])} | {_mean_sd(every).split(' (')[0]} | {runs} |")
  return lines


def final_table(groups, rounds: int) -> list[str]:
  lines = ["| implementation | MADA | finished seeds | fixed mask (exported): final domain-FID, "
           "mean ± sd (per seed) | resampled (official protocol) | evaluated rounds done |",
           "|---|---|---|---|---|---|"]
  for (impl, mada), runs in sorted(groups.items(), key=lambda kv: (IMPLS.index(kv[0][0]),
                                                                  not kv[0][1])):
    done = [rows[max(rows)] for _, rows, finished in runs if finished and rows]
    cells = [_mean_sd([r[f"domain_fid_{m}"] for r in done]) for m in MODES]
    progress = ", ".join(f"s{seed}: {max(rows) if rows else 0}/{rounds}"
                         for seed, rows, _ in runs)
    lines.append(f"| {impl} | {'yes' if mada else 'no'} | {len(done)} | {cells[0]} | "
                 f"{cells[1]} | {progress} |")
  return lines


def curves_table(groups) -> list[str]:
  keys = sorted(groups, key=lambda k: (IMPLS.index(k[0]), not k[1]))
  rounds = sorted({r for runs in groups.values() for _, rows, _ in runs for r in rows})
  if not rounds:
    return []
  head = " | ".join(f"{impl}{'' if mada else ' w/o MADA'}" for impl, mada in keys)
  lines = [f"| round | {head} |", "|---" * (len(keys) + 1) + "|"]
  for r in rounds:
    cells = []
    for k in keys:
      vals = [rows[r]["domain_fid_fixed"] for _, rows, _ in groups[k] if r in rows]
      cells.append(f"{statistics.mean(vals):.1f} (n={len(vals)})" if vals else "-")
    lines.append(f"| {r} | " + " | ".join(cells) + " |")
  return lines


def verdicts(groups) -> list[str]:
  """Per implementation, MADA against no MADA (paired by seed); and the two implementations
  against each other beside the seed spread."""
  lines = []
  for impl in IMPLS:
    pairs = []
    with_ = {s: rows for s, rows, f in groups.get((impl, True), []) if f and rows}
    without = {s: rows for s, rows, f in groups.get((impl, False), []) if f and rows}
    for s in sorted(set(with_) & set(without)):
      pairs.append((with_[s][max(with_[s])], without[s][max(without[s])]))
    if not pairs:
      lines.append(f"- **MADA in {impl}**: no seed has finished both runs yet.")
      continue
    for mode in MODES:
      better = sum(a[f"domain_fid_{mode}"] < b[f"domain_fid_{mode}"] for a, b in pairs)
      diff = [a[f"domain_fid_{mode}"] - b[f"domain_fid_{mode}"] for a, b in pairs]
      verdict = ("helps" if better == len(pairs) else "hurts" if better == 0 else "mixed")
      lines.append(f"- **MADA in {impl}** ({mode} mask, {len(pairs)} seed(s)): final "
                   f"domain-FID with minus without MADA {statistics.mean(diff):+.1f} on "
                   f"average; MADA better on {better} of {len(pairs)}: {verdict} at this scale.")
  for mada in (True, False):
    finals = {impl: [rows[max(rows)]["domain_fid_fixed"] for _, rows, f in
                     groups.get((impl, mada), []) if f and rows] for impl in IMPLS}
    if all(len(v) >= 2 for v in finals.values()):
      gap = abs(statistics.mean(finals["prism_jax"]) - statistics.mean(finals["official"]))
      spread = max(max(v) - min(v) for v in finals.values())
      agree = "within" if gap <= spread else "beyond"
      lines.append(f"- **prism-jax against the official code, {'with' if mada else 'without'} "
                   f"MADA** (fixed mask): the means differ by {gap:.1f}, {agree} the larger "
                   f"seed range ({spread:.1f}).")
  return lines


def figure(groups, path: str) -> str | None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if not any(rows for runs in groups.values() for _, rows, _ in runs):
    return None
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
  styles = {"prism_jax": "-", "official": "--"}
  colors = {True: "tab:blue", False: "tab:orange"}
  for ax, mode in zip(axes, MODES):
    for (impl, mada), runs in groups.items():
      for i, (seed, rows, _) in enumerate(runs):
        if rows:
          pts = sorted((r, row[f"domain_fid_{mode}"]) for r, row in rows.items())
          ax.plot(*zip(*pts), styles[impl], color=colors[mada], marker=".",
                  label=f"{impl}{'' if mada else ' w/o MADA'}" if i == 0 else None)
    ax.set_title(f"domain-FID, {mode} mask", fontsize=9)
    ax.set_xlabel("round", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def report(runs, runs_dir: str, out: str, fig_dir: str, status: dict) -> str:
  from experiments.configs import overrides
  config = overrides.load_config_file(runs[0].setting)
  groups = _group(runs, runs_dir)
  lines = ["# Results: suite `official`", "",
           f"Generated by `python -m experiments.results --suite=official` from the run "
           f"directories in `{runs_dir}` on {time.strftime('%Y-%m-%d')}; no number here is "
           "typed by hand. Domain-FID uses the offline domain classifier (a small CNN trained "
           "on MNIST's held-out split), not InceptionV3; both implementations' samples are "
           "scored by the same evaluator on the same test images.", "",
           f"- Setting (`{runs[0].setting}`): MNIST, Dirichlet({config.alpha}) over "
           f"{config.num_clients} clients, all of them every round, {config.rounds} rounds of "
           f"{config.local.local_steps} local steps of batch {config.local.batch_size}, "
           f"generator ngf {config.ngf}, GFMN moment matching (moving averages at "
           f"{config.loss.kwargs.learning_rate:g}) on the `{config.features}` feature network, "
           f"Adam {config.local.learning_rate:g} (b1 {config.local.b1:g}) on the scores; "
           f"evaluation on {config.eval.num_samples} samples every {config.eval.every} rounds.",
           "- prism-jax: `experiments.train` on that config. Official: the official "
           "repository's server and clients, unmodified, on the same client split and "
           "feature network (`benchmarks.official_run`). Seeds differ in the frozen weights "
           "(each implementation draws its own) and in every random draw.", "",
           "## Final domain-FID", ""] + final_table(groups, config.rounds)
  d = draws(runs, runs_dir)
  if d:
    lines += ["", "## The exported mask, drawn again", "",
              "Each final model's fixed-mask domain-FID over several masks drawn from its "
              "final theta (`python -m benchmarks.official_draws`): how much of a final "
              "fixed-mask figure is the luck of its one draw.", ""] + draws_table(d)
    lines += [""] + draws_verdicts(d)
  lines += ["", "## Verdicts", ""] + verdicts(groups)
  lines += ["", "## Domain-FID per evaluated round (fixed mask, mean over seeds)", ""]
  lines += curves_table(groups) or ["No evaluated rounds yet."]
  fig = figure(groups, os.path.join(fig_dir, "official_curves.png"))
  if fig:
    rel = os.path.relpath(os.path.abspath(fig), os.path.dirname(os.path.abspath(out)))
    lines += ["", f"![official_curves.png]({rel})"]
  notes = [f"- `{run.name}`: {status[run.name]}" for run in runs
           if status.get(run.name, "").startswith(("skipped", "failed"))]
  from experiments import report as rep
  return rep.write_report(out, lines, "Runs that did not run", notes)
