"""The report of a suite (``RESULTS*.md``): tables, the paper's claims checked, verdicts
and figures, every number read from the run directories.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from experiments.suites import COMMITTED_RUNS, MAIN_SUITE, Run, _dp, _non_iid, report_path
from prism_jax import evaluation


MODES = evaluation.MODES
FID_TARGETS = (200.0, 100.0, 50.0, 30.0)       # domain-FID levels for rounds / bits to target


def metric(s: dict, name: str, mode: str = "fixed"):
  """A domain-classifier metric of a summary or metrics row (``fixed``: the exported model)."""
  return s.get(f"domain_{name}_{mode}")

# The paper's FID (InceptionV3, 10k test images, full scale, 10 non-IID clients), quoted from
# its project page: comparable only at the same scale and embedder.
PAPER_FID = {
    ("mnist", "PRISM"): 9.70, ("fashion_mnist", "PRISM"): 32.75,
    ("celeb_a", "PRISM"): 21.87, ("cifar10", "PRISM"): 61.12,
    ("mnist", "PRISM w/o MADA"): 15.23, ("fashion_mnist", "PRISM w/o MADA"): 35.14,
    ("celeb_a", "PRISM w/o MADA"): 24.26, ("cifar10", "PRISM w/o MADA"): 68.42,
    ("mnist", "PRISM, DP eps 9.8"): 34.20, ("fashion_mnist", "PRISM, DP eps 9.8"): 67.16,
    ("celeb_a", "PRISM, DP eps 9.8"): 39.80,
}


def _load(runs_dir: str, run: Run) -> dict | None:
  workdir = os.path.join(runs_dir, run.name)
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return {"run": run, "summary": summary, "rows": rows, "config": config, "dir": workdir}


def _finished(runs_dir: str, runs: list[Run]) -> list[dict]:
  return [r for r in (_load(runs_dir, run) for run in runs) if r is not None]


def _fmt(v, digits=3):
  if v is None:
    return "-"
  if isinstance(v, float):
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-2):
      return f"{v:.2e}"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
  return f"{v:,}" if isinstance(v, int) else str(v)


def _total_bits(s: dict) -> float:
  """All bits of a run, up + down: entropy-coded both ways when the run coded them (the
  coded broadcast of counts), else the raw uploads and the float32 broadcast."""
  if "coded_bits_total" in s:
    return s["coded_bits_total"]
  return s["rounds"] * (s["bits_up"] + s["bits_down"])


def _coded(s: dict) -> str:
  if "coded_bits_per_weight_last" not in s:
    return "-"
  out = f"{s['coded_bits_per_weight_first']:.3f} -> {s['coded_bits_per_weight_last']:.3f}"
  if "coded_bits_down_per_weight_mean" in s:
    out += f"; down {s['coded_bits_down_per_weight_mean']:.2f}"
  return out


def main_table(results: list[dict]) -> list[str]:
  lines = ["| dataset | split | method | seed | domain-FID fixed mask (exported) | resampled "
           "(official) | threshold | precision | recall | density | coverage "
           "| upload bits / client / round | entropy-coded bits / weight / client: up (first -> "
           "last round); down (mean) "
           "| total bits, all rounds (up + down) | final model bytes (% of dense) "
           "| epsilon (delta) | wall time |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    s, run = r["summary"], r["run"]
    eps = s.get("dp_epsilon")
    lines.append(
        f"| {r['config']['dataset']} | {run.split} | {run.label} | {run.seed} "
        f"| {' | '.join(_fmt(metric(s, 'fid', m)) for m in MODES)} "
        f"| {_fmt(metric(s, 'precision'))} | {_fmt(metric(s, 'recall'))} "
        f"| {_fmt(metric(s, 'density'))} | {_fmt(metric(s, 'coverage'))} "
        f"| {s['bits_up_per_client']:,} | {_coded(s)} | {_total_bits(s):.3g} "
        f"| {s['model_bytes']:,} ({100 * s['model_fraction_of_dense']:.1f}%) "
        f"| {_fmt(eps) + ' (' + _fmt(s.get('dp_delta')) + ')' if eps else '-'} "
        f"| {_wall(s)} |")
  return lines


def _wall(s: dict) -> str:
  """A run's wall time; a resumed run's counts from its resume only, and says so."""
  since = f" since round {s['resumed_at']} (resumed)" if s.get("resumed_at") else ""
  return f"{s['seconds_total'] / 60:.1f} min{since}"


def _find(results, split, label):
  return next((r for r in results if r["run"].split == split and r["run"].label == label), None)


def claims(results: list[dict]) -> list[str]:
  """The paper's qualitative claims, each checked on the runs at hand."""
  out = []
  for split in ("iid", "dirichlet", "shards"):
    # A PRISM run that coded both directions, when there is one (the deployed protocol).
    prism = [r for r in results if r["run"].split == split and r["run"].label == "PRISM"]
    p = next((r for r in prism if "coded_bits_total" in r["summary"]), prism[0] if prism
             else None)
    d = _find(results, split, "dense FedAvg")
    if p and d:
      ps, ds = p["summary"], d["summary"]
      up = 1 - ps["bits_up"] / ds["bits_up"]
      tot = 1 - _total_bits(ps) / _total_bits(ds)
      out.append(
          f"- **Communication vs dense FedAvg ({split})**: PRISM uploads {up:.1%} fewer bits "
          f"than dense FedAvg ({ps['bits_up']:,} vs {ds['bits_up']:,} per round): "
          f"{'held' if up > 0.6 else 'did not hold'} for the upload (> 60%). Counting the "
          f"broadcast as well ({'coded mask counts' if 'coded_bits_total' in ps else 'float32 scores'}"
          f" for PRISM, float32 weights for FedAvg), the total is {tot:.1%} lower "
          f"({'held' if tot > 0.6 else 'did not hold'} for > 60% in total). Domain-FID: "
          f"PRISM {_fmt(metric(ps, 'fid'))}, dense FedAvg {_fmt(metric(ds, 'fid'))} (fixed "
          "mask).")
      break
  p = next((r for r in results if r["run"].label == "PRISM"), None)
  if p:
    frac = p["summary"]["model_fraction_of_dense"]
    out.append(f"- **Final model size**: {p['summary']['model_bytes']:,} bytes = {frac:.2%} of "
               f"the dense float32 generator: {'held' if frac < 0.05 else 'did not hold'} "
               "(< 5%).")
  out += mada_verdict(results)
  p = _find(results, "dirichlet", "PRISM")
  for label in ("PRISM, DP eps 9.8", "PRISM, DP sigma 0.05"):
    q = _find(results, "dirichlet", label)
    if q and p and metric(p["summary"], "fid") is not None:
      s = q["summary"]
      ratio = metric(s, "fid") / metric(p["summary"], "fid")
      out.append(f"- **{label}, Dirichlet**: noise std {s['dp_noise_std']:.3g} on theta, "
                 f"epsilon spent {_fmt(s.get('dp_epsilon'))} at delta {_fmt(s.get('dp_delta'))} "
                 f"(client-level, sensitivity sqrt(d)); domain-FID {_fmt(metric(s, 'fid'))} "
                 f"vs {_fmt(metric(p['summary'], 'fid'))} without DP ({ratio:.2f}x): graceful "
                 f"degradation (< 2x) {'held' if ratio < 2 else 'did not hold'}.")
  return out


def _by_label(results, split, label) -> list[dict]:
  return [r for r in results if r["run"].split == split and r["run"].label == label
          and metric(r["summary"], "fid") is not None]


MADA_PAIRS = (("PRISM", "PRISM w/o MADA", ""),
              ("PRISM, 25 local steps", "PRISM w/o MADA, 25 local steps", ", 25 local steps"))


def mada_verdict(results: list[dict]) -> list[str]:
  """PRISM with vs without MADA per split (and per local-step count), over every seed that
  has both: mean (± std over seeds) of the final domain-FID, fixed and resampled masks, and
  on how many seeds MADA won (the verdict, on the fixed mask: held on every seed, did not
  hold on any, else mixed)."""
  out = []
  for (with_, without, what), split in ((p, s) for p in MADA_PAIRS
                                        for s in ("iid", "shards", "dirichlet")):
    runs = {lab: {r["run"].seed: r["summary"] for r in _by_label(results, split, lab)}
            for lab in (with_, without)}
    seeds = sorted(set(runs[with_]) & set(runs[without]))
    if not seeds:
      continue

    def stat(x):
      return f"{np.mean(x):.3g}" + (f" ± {np.std(x, ddof=1):.2g}" if len(x) > 1 else "")
    parts, wins = [], {}
    for mode in ("fixed", "resampled"):
      a, b = ([metric(runs[lab][sd], "fid", mode) for sd in seeds]
              for lab in (with_, without))
      if None in a or None in b:
        continue
      wins[mode] = sum(x < y for x, y in zip(a, b))
      parts.append(f"{mode} mask {stat(a)} with MADA vs {stat(b)} without (MADA better on "
                   f"{wins[mode]} of {len(seeds)})")
    n = wins.get("fixed", 0)
    verdict = "held" if n == len(seeds) else "did not hold" if n == 0 else "mixed"
    cfg = next(r for r in results if r["run"].split == split)["config"]
    name = f"Dirichlet({cfg['alpha']})" if split == "dirichlet" else split
    out.append(f"- **MADA under {name}{what}, {len(seeds)} seed(s)**, final domain-FID: "
               + "; ".join(parts) + f". MADA helps: {verdict} at this scale.")
  return out


def _cumulative_bits(r: dict) -> dict[int, float]:
  """Bits sent up to the end of each round, keyed by round: as sent, i.e. entropy-coded
  when logged (uploads; the broadcast of counts), else the raw uploads and the float32
  broadcast."""
  total, out = 0.0, {0: 0.0}
  for row in r["rows"]:
    if "bits_up" not in row:
      continue
    total += row.get("coded_bits_up", row["bits_up"]) + row.get("coded_bits_down",
                                                                 row["bits_down"])
    out[row["round"]] = total
  return out


def to_target_table(results: list[dict]) -> list[str]:
  """Rounds and bits (up + down) each run needed to first reach each domain-FID target
  (fixed mask, at the evaluated rounds)."""
  lines = ["| split | method | seed | " + " | ".join(
      f"FID <= {t:g}: round, bits" for t in FID_TARGETS) + " |",
           "|---|---|---|" + "---|" * len(FID_TARGETS)]
  for r in results:
    bits = _cumulative_bits(r)
    cells = []
    for t in FID_TARGETS:
      hit = next((row["round"] for row in r["rows"]
                  if (metric(row, "fid") or np.inf) <= t), None)
      cells.append("not reached" if hit is None else
                   f"{hit}, {bits.get(hit, float('nan')):.3g}")
    lines.append(f"| {r['run'].split} | {r['run'].label} | {r['run'].seed} | "
                 + " | ".join(cells) + " |")
  return lines


def paper_table(results: list[dict]) -> list[str]:
  lines = ["| dataset | split | method | ours: domain-FID, fixed mask (this scale) | paper: "
           "InceptionV3 FID (full scale) |", "|---|---|---|---|---|"]
  for r in results:
    ds = r["config"]["dataset"].replace("mnist_offline", "mnist")
    paper = PAPER_FID.get((ds, r["run"].label))
    if paper is not None and r["run"].split == _non_iid(ds) and r["run"].seed == 0:
      lines.append(f"| {ds} | {r['run'].split} | {r['run'].label} "
                   f"| {_fmt(metric(r['summary'], 'fid'))} | {paper} (paper) |")
  return lines if len(lines) > 2 else []


def figures(results: list[dict], fig_dir: str, suite: str) -> list[str]:
  """Metric vs round per method for each split, and the final sample grids side by side."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image
  os.makedirs(fig_dir, exist_ok=True)
  out = []
  splits = [s for s in ("iid", "shards", "dirichlet") if any(r["run"].split == s for r in results)]
  keys = [k for k in ("domain_fid_fixed", "domain_fid_resampled", "domain_precision_fixed",
                      "domain_recall_fixed", "loss")
            if any(k in row for r in results for row in r["rows"])]
  several = len({r["config"]["dataset"] for r in results}) > 1
  shown = [r for r in results if r["run"].seed == 0]   # other seeds: in the tables

  def name(r):   # the method, and the dataset when the suite has several
    return f"{r['config']['dataset']}: {r['run'].label}" if several else r["run"].label
  colour = {n: f"C{i % 10}" for i, n in enumerate(dict.fromkeys(map(name, results)))}

  def panel(ax, split, k, x_of):
    for r in (r for r in shown if r["run"].split == split):
      x = x_of(r)
      pts = [(x[row["round"]], row[k]) for row in r["rows"] if k in row and row["round"] in x]
      if pts:
        ax.plot(*zip(*pts), marker=".", label=name(r), color=colour[name(r)])
    if "fid" in k:
      ax.set_yscale("log")
    ax.tick_params(labelsize=7)

  def save(fig, suffix):
    fig.tight_layout()
    path = os.path.join(fig_dir, f"{suite}_{suffix}.png")
    fig.savefig(path)
    plt.close(fig)
    out.append(path)

  if splits and keys:
    fig, axes = plt.subplots(len(splits), len(keys), figsize=(3.6 * len(keys), 2.8 * len(splits)),
                             squeeze=False, dpi=100)
    for i, split in enumerate(splits):
      for j, k in enumerate(keys):
        panel(axes[i, j], split, k, lambda r: {row["round"]: row["round"] for row in r["rows"]})
        axes[i, j].set_title(f"{split}: {k}", fontsize=9)
        axes[i, j].set_xlabel("round", fontsize=8)
      axes[i, 0].legend(fontsize=6)
    save(fig, "curves")
  if splits and "domain_fid_fixed" in keys:   # quality per bit sent, both directions
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.2), squeeze=False,
                             dpi=100)
    for ax, split in zip(axes[0], splits):
      panel(ax, split, "domain_fid_fixed",   # round 0 (nothing sent yet) is off a log axis
            lambda r: {k: v for k, v in _cumulative_bits(r).items() if v > 0})
      ax.set_xscale("log")
      ax.set_title(f"{split}: domain-FID (fixed mask) vs bits sent (up + down)", fontsize=8)
      ax.set_xlabel("cumulative bits, all clients", fontsize=8)
      ax.legend(fontsize=6)
    save(fig, "fid_vs_bits")
  for split in splits:
    runs = [r for r in shown if r["run"].split == split
            and os.path.exists(os.path.join(r["dir"], "samples.png"))]
    if not runs:
      continue
    fig, axes = plt.subplots(1, len(runs), figsize=(2.6 * len(runs), 2.9), squeeze=False,
                             dpi=100)
    for ax, r in zip(axes[0], runs):
      ax.imshow(np.asarray(Image.open(os.path.join(r["dir"], "samples.png"))), cmap="gray")
      ax.set_title(name(r), fontsize=7)
      ax.axis("off")
    fig.tight_layout()
    path = os.path.join(fig_dir, f"{suite}_samples_{split}.png")
    fig.savefig(path)
    plt.close(fig)
    out.append(path)
  return out


def _scale(results: list[dict]) -> list[str]:
  c = results[0]["config"]
  s = results[0]["summary"]
  clients = sorted({(r["config"]["num_clients"],
                     r["config"].get("clients_per_round") or r["config"]["num_clients"])
                    for r in results})
  return [f"- Scale of these runs: {s['num_weights']:,} masked weights (generator ngf "
          f"{c['ngf']}, {c['image_size']}x{c['image_size']}), "
          f"{' or '.join(f'{n:,} clients, {k:,} per round' for n, k in clients)}, "
          f"{c['local']['local_steps']} local steps of batch {c['local']['batch_size']}, "
          f"{c['rounds']} rounds; loss {c['loss']['name']} on {c['features']} features; "
          f"evaluation on {c['eval']['num_samples']} samples."]


def report(suite: str, runs: list[Run], runs_dir: str, out: str, fig_dir: str,
           status: dict[str, str], note: str = "") -> str:
  results = _finished(runs_dir, runs)
  missing = [run.name for run in runs if not any(r["run"] == run for r in results)]
  lines = [f"# Results: suite `{suite}`", "",
           f"Generated by `python -m experiments.results --suite={suite}` from the run "
           f"directories in `{runs_dir}` on {time.strftime('%Y-%m-%d')}; no number here is "
           "typed by hand. Domain-FID, precision, recall, density and coverage use the offline "
           "domain classifier (a small CNN trained on the held-out split), not InceptionV3: "
           "they rank methods at this scale and are not comparable with published FIDs. "
           "Wall times are as measured, on a machine other jobs may have shared." +
           (f" {note}" if note else ""), ""]
  if not results:
    lines += ["No finished runs yet."]
  else:
    lines += _scale(results) + [
        "- Paper: 3.5M masked weights (ngf 64), 10 clients all taking part, 100 local steps, "
        "150-500 rounds, VGG19 moment matching (GFMN), InceptionV3 FID on 10k images.", "",
        "## Main table", ""] + main_table(results)
    checked = claims(results)
    if checked:   # a suite without the runs a claim needs (dp) has no section
      lines += ["", "## The paper's claims, checked here", ""] + checked
    if suite == "dp":
      lines += ["", "## Privacy against clients per round (PBM, 1 bit per weight up)", ""]
      lines += dp_verdict(results)
    pt = paper_table(results) if suite not in ("smoke", "dp") else []
    if pt:
      lines += ["", "## Beside the paper's numbers (different embedder and scale)", ""] + pt
    if any(metric(row, "fid") is not None for r in results for row in r["rows"]):
      lines += ["", "## Rounds and bits to reach a domain-FID (fixed mask)", "",
                "First evaluated round at or below each target, and the bits sent by then "
                "(all clients, up + down: entropy-coded where the run coded them, i.e. the uploads "
                "and the broadcast of mask counts; otherwise raw uploads and the float32 "
                "broadcast, as for dense FedAvg and the runs made before the coded "
                "broadcast).", ""]
      lines += to_target_table(results)
    figs = figures(results, fig_dir, suite)
    if figs:
      lines += ["", "## Figures", ""]
      rel = os.path.dirname(os.path.abspath(out))
      lines += [f"![{os.path.basename(p)}]({os.path.relpath(os.path.abspath(p), rel)})"
                for p in figs]
  if suite == MAIN_SUITE:   # RESULTS.md also gathers the privacy verdict
    lines += dp_section(out)
  notes = [f"- `{name}`: {status.get(name, 'no finished run')}" for name in missing]
  return write_report(out, lines, "Runs not in the tables", notes)


def write_report(out: str, lines: list[str], notes_title: str, notes: list[str]) -> str:
  """Writes a report's lines, with a closing section of notes when there are any."""
  if notes:
    lines = lines + ["", f"## {notes_title}", ""] + notes
  text = "\n".join(lines) + "\n"
  with open(out, "w") as f:
    f.write(text)
  return text


def dp_verdict(results: list[dict]) -> list[str]:
  """Domain-FID against epsilon and clients per round, each beside non-private PRISM with as
  many clients, and the smallest number of clients per round at which epsilon <= 10 keeps
  domain-FID within 2x of non-private."""
  by_n = {}
  for r in results:
    by_n.setdefault(r["config"]["clients_per_round"], []).append(r)
  lines = ["| clients per round | method | epsilon (delta) | domain-FID (fixed mask) | vs no DP |",
           "|---|---|---|---|---|"]
  useful, uninformative, tested = [], [], []
  for n in sorted(by_n):
    base = next((r for r in by_n[n] if r["run"].label.startswith("PRISM (no DP)")), None)
    ref = metric(base["summary"], "fid") if base else None
    # The algorithm-as-stated DP at epsilon 10 is noise (std ~ 1e2 on theta): if the
    # non-private run is not 2x better than it, the runs are too short to tell anything.
    noise = next((metric(r["summary"], "fid") for r in by_n[n]
                  if "noise on theta" in r["run"].label), None)
    if ref and noise and noise / ref < 2:
      uninformative.append(n)
    for r in by_n[n]:
      s, fid = r["summary"], metric(r["summary"], "fid")
      ratio = fid / ref if fid is not None and ref else None
      eps = s.get("dp_epsilon")
      lines.append(f"| {n:,} | {r['run'].label} | "
                   f"{_fmt(eps) + ' (' + _fmt(s.get('dp_delta')) + ')' if eps else '-'} | "
                   f"{_fmt(fid)} | {'-' if ratio is None or not eps else f'{ratio:.2f}x'} |")
      if eps and eps <= 10 and ratio is not None and "PBM" in r["run"].label:
        tested.append(n)
        if ratio <= 2 and n not in uninformative:
          useful.append(n)
  judged = [n for n in tested if n not in uninformative]
  verdict = (f"the smallest number of clients per round at which PBM with epsilon <= 10 keeps "
             f"domain-FID within 2x of non-private PRISM is {min(useful):,}" if useful else
             f"with up to {max(judged):,} clients per round, no PBM run with epsilon <= 10 "
             "stayed within 2x of non-private PRISM" if judged else "none yet")
  untested = [n for n in by_n if n not in tested]
  if untested:
    verdict += (f" (no PBM run with epsilon <= 10 has finished at "
                f"{', '.join(f'{n:,}' for n in untested)} clients per round)")
  if uninformative:
    verdict += (f" (no verdict at {', '.join(f'{n:,}' for n in uninformative)} clients per "
                "round: there the non-private run is not 2x better than the noise-only run, so "
                "the runs are too short to separate the mechanisms)")
  return lines + ["", f"Verdict: {verdict}."]


def dp_section(out: str) -> list[str]:
  """The dp suite's privacy table and verdict from its committed runs, for RESULTS.md; its
  full report is RESULTS-dp.md (regenerate both after a dp run finishes)."""
  results = _finished(COMMITTED_RUNS["dp"], _dp())
  if not results:
    return []
  full = os.path.relpath(report_path("dp"), os.path.dirname(os.path.abspath(out)))
  return (["", f"## Privacy: PBM against clients per round (suite `dp`, `{full}`)", ""] +
          _scale(results) + [""] + dp_verdict(results))
