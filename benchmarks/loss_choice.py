"""Which pixel loss gives digits a person reads: the default's Gaussian MMD against transport
losses, trained centrally (one client holding all 50k images, 3 rounds of 250 local steps,
otherwise the default config), with domain-FID of the three views, legibility (the share of
samples two blur-tolerant classifiers read as the same digit, ``metrics.legibility``) and
the sample grids; the default command and its ``mnist_cpu.py:ot`` and ``:ot_mmd`` variants
side by side, and ``:ot_mmd`` round by round over 15 rounds; and
what both metrics give real digits that are blurred, greyed, thickened or cut in half.

  python -m benchmarks.loss_choice --workdir=runs/loss_choice      # ~60 min; resumable

Each variant's run directory is reused when it holds a summary. Writes
``benchmarks/results/loss_choice.{json,md}`` and ``results/loss_choice_samples.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

MODES = ("fixed", "resampled", "threshold")
CENTRAL = ("--config.num_clients=1", "--config.clients_per_round=1", "--config.rounds=3",
           "--config.local.local_steps=250")
_SUM = "--config.loss.name=sum"
NARROW = "(0.01,0.03)"          # the Gaussian MMD's two narrowest bandwidths only


def sum_loss(sinkhorn: dict | None = None, **terms) -> list[str]:
  """Flags of a ``loss.name=sum`` over ``benchmarks/loss_choice_config.py`` (Sinkhorn eps
  0.05, squared cost, weight 1; every other term weight 0): ``term={"arg": value}``."""
  out = [_SUM]
  for term, kwargs in {"sinkhorn": sinkhorn or {}, **terms}.items():
    out += [f"--config.loss.kwargs.{term}.{arg}={value}" for arg, value in kwargs.items()]
  return out


def _ot(eps=0.01, mmd=0.0) -> list[str]:
  """Sinkhorn at ``eps`` + intensity W2 + edge W2 (+ the narrow-bandwidth MMD)."""
  terms = {"marginal_w2": {"weight": 1.0}, "edge_w2": {"weight": 1.0}}
  if mmd:
    terms["gaussian_mmd"] = {"weight": mmd, "bandwidths": NARROW}
  return sum_loss({"eps": eps}, **terms)


# key: (label, flags); flags that set loss.* run on benchmarks/loss_choice_config.py.
VARIANTS = {
    "mmd": ("Gaussian MMD (`:mmd`, the default then)", []),
    "mmd_ngf32": ("Gaussian MMD, generator ngf 32 (1.6M weights)", ["--config.ngf=32"]),
    "sk05": ("Sinkhorn eps 0.05", sum_loss()),
    "sk01": ("Sinkhorn eps 0.01", sum_loss({"eps": 0.01})),
    "sk05_mmd1": ("Sinkhorn 0.05 + MMD", sum_loss(gaussian_mmd={"weight": 1.0})),
    "sk05_mmd03": ("Sinkhorn 0.05 + 0.3 MMD", sum_loss(gaussian_mmd={"weight": 0.3})),
    "sk05_m02": ("Sinkhorn 0.05 + 0.2 intensity W2", sum_loss(marginal_w2={"weight": 0.2})),
    "sk05_m1": ("Sinkhorn 0.05 + intensity W2", sum_loss(marginal_w2={"weight": 1.0})),
    "sk05_m3": ("Sinkhorn 0.05 + 3 intensity W2", sum_loss(marginal_w2={"weight": 3.0})),
    "sk05_mmd03_m1": ("Sinkhorn 0.05 + 0.3 MMD + intensity W2",
                      sum_loss(gaussian_mmd={"weight": 0.3}, marginal_w2={"weight": 1.0})),
    "sk01_m1": ("Sinkhorn 0.01 + intensity W2",
                sum_loss({"eps": 0.01}, marginal_w2={"weight": 1.0})),
    "sk01_m1_e1": ("Sinkhorn 0.01 + intensity W2 + edge W2", _ot()),
    "sk002_m1_e1": ("Sinkhorn 0.002 + intensity W2 + edge W2", _ot(0.002)),
    "sk01_m1_e1_n1": ("Sinkhorn 0.01 + intensity W2 + edge W2 + narrow MMD (`mnist_cpu.py:ot`)",
                      _ot(mmd=1.0)),
    "sk002_m1_e1_n3": ("Sinkhorn 0.002 + intensity W2 + edge W2 + 3 narrow MMD",
                       _ot(0.002, mmd=3.0)),
    "sk05l1": ("Sinkhorn 0.05, L1 cost", sum_loss({"cost": "l1"})),
    "sk05l1_m1": ("Sinkhorn 0.05, L1 cost + intensity W2",
                  sum_loss({"cost": "l1"}, marginal_w2={"weight": 1.0})),
}
SHOWN = ("mmd", "mmd_ngf32", "sk05", "sk01_m1", "sk01_m1_e1", "sk01_m1_e1_n1")
_CONFIG = "--config=" + os.path.join("benchmarks", "loss_choice_config.py")
_MMD = "--config=" + os.path.join("experiments", "configs", "mnist_cpu.py:mmd")


def with_config(flags: list[str]) -> list[str]:
  """The command-line arguments of a variant: ``sum`` losses on ``loss_choice_config.py``,
  the rest on ``mnist_cpu.py:mmd`` (the one-loss run this benchmark compares against)."""
  if any(f.startswith("--config=") for f in flags):
    return list(flags)
  return [_CONFIG if _SUM in flags else _MMD, *flags]


# The default command of the time (`:mmd`) as is and with the transport losses (federated,
# 5 rounds).
FEDERATED = {"fed_mmd": ("default: Gaussian MMD", with_config([])),
             "fed_ot_noedge": ("default with Sinkhorn 0.01 + intensity W2",
                               with_config(VARIANTS["sk01_m1"][1])),
             "fed_ot_edge": ("default with Sinkhorn 0.01 + intensity W2 + edge W2",
                             with_config(VARIANTS["sk01_m1_e1"][1])),
             "fed_ot": ("default with mnist_cpu.py:ot",
                        ["--config=experiments/configs/mnist_cpu.py:ot"]),
             "fed_ot_mmd": ("mnist_cpu.py:ot_mmd: 3 rounds of :ot (histograms strided), then "
                            "Gaussian MMD", ["--config=experiments/configs/mnist_cpu.py:ot_mmd"])}
# The curriculum for longer: every round's evaluation (the first 5 rounds are fed_ot_mmd's).
CURVE = ("fed_ot_mmd_r15", ["--config=experiments/configs/mnist_cpu.py:ot_mmd",
                            "--config.rounds=15"])

DEFAULT_PANELS = [("fed_mmd", "default: Gaussian MMD"), ("fed_ot", "mnist_cpu.py:ot"),
                  ("fed_ot_mmd", "mnist_cpu.py:ot_mmd, 5 rounds"),
                  (CURVE[0], "mnist_cpu.py:ot_mmd, 15 rounds")]


def curve_rows(workdir: str, key: str) -> list[dict]:
  """Per round: cumulative training seconds, domain-FID of the three views, legibility of
  the fixed mask (the evaluation's 1,000 samples)."""
  with open(os.path.join(workdir, key, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  out, seconds = [], 0.0
  for r in rows:
    seconds += r.get("seconds") or 0.0
    if r["round"] > 0 and "domain_fid_fixed" in r:
      out.append({"round": r["round"], "train_s": seconds,
                  **{m: r[f"domain_fid_{m}"] for m in MODES},
                  "legibility": r["legibility_fixed"]})
  return out


def train(workdir: str, key: str, args: list[str]) -> dict:
  """The run's summary; trained first unless its directory holds one."""
  out = os.path.join(workdir, key)
  summary = os.path.join(out, "summary.json")
  if not os.path.exists(summary):
    subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={out}", *args],
                   check=True)
  with open(summary) as f:
    return json.load(f)


def central_args(key: str) -> list[str]:
  return [*CENTRAL, *with_config(VARIANTS[key][1])]


def training_seconds(workdir: str, key: str) -> float:
  """Seconds of the training rounds (compilation included, evaluation excluded)."""
  with open(os.path.join(workdir, key, "metrics.jsonl")) as f:
    return sum(json.loads(line).get("seconds") or 0.0 for line in f)


class Judge:
  """Domain-FID (the default run's embedder and test statistics) and legibility (its
  judges, :func:`prism_jax.metrics.legibility`) of real digits, degraded ones, and the
  exported model of a run (1,000 samples, z fixed)."""

  def __init__(self):
    import jax
    from experiments.configs import mnist_cpu
    from prism_jax import data, evaluation, generator, train as train_lib
    c = mnist_cpu.get_config("mmd")
    self.splits = data.load(c.dataset, c.image_size)
    self.ev = evaluation.make_evaluator(
        generator.ResNetGenerator(c.image_size, 1, c.nz, c.ngf), self.splits, 10,
        jax.random.key(0), 1000, train_lib.cache_dir(c), c.dataset, legibility=True)
    self.z = jax.random.normal(jax.random.key(0), (1000, c.nz))

  def __call__(self, images) -> dict[str, float]:
    m = self.ev.metrics(images, "fixed")
    return {"fid": m["domain_fid_fixed"], "legibility": m["legibility_fixed"]}

  def run(self, workdir: str, key: str) -> dict[str, float]:
    from prism_jax import export
    g = export.load_generator(os.path.join(workdir, key, "model.npz"))
    return self(np.concatenate([np.asarray(g(self.z[i:i + 500])) for i in (0, 500)]))

  def degraded_real(self) -> dict[str, dict[str, float]]:
    """What the two metrics punish, on 1,000 training digits."""
    from prism_jax import embedders
    real = self.splits["train"].images[:1000]
    out = {"real training digits": self(real)}
    for s in (0.5, 0.75, 1.0, 1.5):
      out[f"Gaussian blur sigma {s} px"] = self(embedders.gaussian_blur(real, s))
    out["half intensity (grey strokes)"] = self(real // 2)
    thick = real.copy()
    for dy, dx in ((0, 1), (1, 0), (1, 1)):         # 2x2 dilation
      thick[:, dy:, dx:] = np.maximum(thick[:, dy:, dx:], real[:, :32 - dy, :32 - dx])
    out["strokes thickened (2x2 dilation)"] = self(thick)
    erased = real.copy()
    erased[:, :, 16:] = 0
    out["right half erased (broken shapes)"] = self(erased)
    return out


def figure(workdir: str, panels: list[tuple[str, str]], path: str, cols: int = 3) -> None:
  """Sample grids ``(run key, title)`` side by side, on the grids' own grey scale."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 3.8 * rows), squeeze=False)
  for ax, (key, title) in zip(axes.flat, panels):
    ax.imshow(plt.imread(os.path.join(workdir, key, "samples.png")), cmap="gray", vmin=0,
              vmax=1)
    ax.set_title(textwrap.fill(title, 42), fontsize=9)
  for ax in axes.flat:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/loss_choice")
  p.add_argument("--out", default="benchmarks/results/loss_choice")
  args = p.parse_args()
  runs = {k: train(args.workdir, k, central_args(k)) for k in VARIANTS}
  runs.update({k: train(args.workdir, k, a) for k, (_, a) in FEDERATED.items()})
  judge = Judge()

  def row(key, label):
    s = runs[key]
    return {"key": key, "label": label, **{m: s[f"domain_fid_{m}"] for m in MODES},
            "recall_fixed": s["domain_recall_fixed"],
            "legibility": judge.run(args.workdir, key)["legibility"],
            "train_s": training_seconds(args.workdir, key)}

  central = [row(k, label) for k, (label, _) in VARIANTS.items()]
  federated = [row(k, label) for k, (label, _) in FEDERATED.items()]
  train(args.workdir, *CURVE)
  curve = curve_rows(args.workdir, CURVE[0])
  degraded = judge.degraded_real()
  with open(args.out + ".json", "w") as f:
    json.dump({"central": central, "federated": federated, "ot_mmd_curve": curve,
               "degraded_real": degraded}, f, indent=1)
  md = []
  for title, rows in (("loss (central, 3 x 250 steps)", central),
                      ("the default command (federated, 5 rounds)", federated)):
    md += [f"| {title} | domain-FID fixed | resampled | threshold | recall (fixed) | "
           "legibility (exported) | training s |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['label']} | {r['fixed']:.1f} | {r['resampled']:.1f} | {r['threshold']:.1f} "
           f"| {r['recall_fixed']:.2f} | {r['legibility']:.2f} | {r['train_s']:.0f} |"
           for r in rows]
    md.append("")
  md += ["| `mnist_cpu.py:ot_mmd`, round | training s (cumulative) | domain-FID fixed | resampled "
         "| threshold | legibility (fixed) |", "|---|---|---|---|---|---|"]
  md += [f"| {r['round']} | {r['train_s']:.0f} | {r['fixed']:.1f} | {r['resampled']:.1f} | "
         f"{r['threshold']:.1f} | {r['legibility']:.2f} |" for r in curve]
  md.append("")
  md += ["| real digits (1,000 training images) | domain-FID vs the test split | legibility |",
         "|---|---|---|"]
  md += [f"| {k} | {v['fid']:.1f} | {v['legibility']:.2f} |" for k, v in degraded.items()]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(md) + "\n")
  figure(args.workdir, [(k, VARIANTS[k][0].replace(" (`mnist_cpu.py:ot`)", "")) for k in SHOWN],
         os.path.join("results", "loss_choice_samples.png"))
  figure(args.workdir, DEFAULT_PANELS, os.path.join("results", "loss_choice_default_samples.png"),
         cols=4)
  print("\n".join(md))


if __name__ == "__main__":
  main()
