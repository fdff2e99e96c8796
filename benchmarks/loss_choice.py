"""Which pixel loss gives digits a person reads: the default's Gaussian MMD against transport
losses, trained centrally (one client holding all 50k images, 3 rounds of 250 local steps,
otherwise the default config), with domain-FID of the three views and the sample grids; the
default command and its ``mnist_cpu.py:ot`` variant side by side; and what domain-FID gives
real digits that are blurred, greyed or thickened.

  python -m benchmarks.loss_choice --workdir=runs/loss_choice      # ~60 min; resumable

Each variant's run directory is reused when it holds a summary. Writes
``benchmarks/loss_choice.{json,md}`` and ``results/loss_choice_samples.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

MODES = ("fixed", "resampled", "threshold")
CENTRAL = ("--config.num_clients=1", "--config.clients_per_round=1", "--config.rounds=3",
           "--config.local.local_steps=250")
_SUM = "--config.loss.name=sum"
# key: (label, loss spec): (MMD weight, Sinkhorn cost, eps, intensity W2 weight[, edge W2
# weight]) of a "sum" loss (loss.kwargs.<term>.<arg>), or () for the default's MMD.
VARIANTS = {
    "mmd": ("Gaussian MMD (the default)", ()),
    "sk05": ("Sinkhorn eps 0.05", (0.0, "sq", 0.05, 0.0)),
    "sk01": ("Sinkhorn eps 0.01", (0.0, "sq", 0.01, 0.0)),
    "sk05_mmd1": ("Sinkhorn 0.05 + MMD", (1.0, "sq", 0.05, 0.0)),
    "sk05_mmd03": ("Sinkhorn 0.05 + 0.3 MMD", (0.3, "sq", 0.05, 0.0)),
    "sk05_m02": ("Sinkhorn 0.05 + 0.2 intensity W2", (0.0, "sq", 0.05, 0.2)),
    "sk05_m1": ("Sinkhorn 0.05 + intensity W2", (0.0, "sq", 0.05, 1.0)),
    "sk05_m3": ("Sinkhorn 0.05 + 3 intensity W2", (0.0, "sq", 0.05, 3.0)),
    "sk05_mmd03_m1": ("Sinkhorn 0.05 + 0.3 MMD + intensity W2", (0.3, "sq", 0.05, 1.0)),
    "sk01_m1": ("Sinkhorn 0.01 + intensity W2", (0.0, "sq", 0.01, 1.0)),
    "sk01_m1_e1": ("Sinkhorn 0.01 + intensity W2 + edge W2 (`mnist_cpu.py:ot`)",
                   (0.0, "sq", 0.01, 1.0, 1.0)),
    "sk05l1": ("Sinkhorn 0.05, L1 cost", (0.0, "l1", 0.05, 0.0)),
    "sk05l1_m1": ("Sinkhorn 0.05, L1 cost + intensity W2", (0.0, "l1", 0.05, 1.0)),
}
SHOWN = ("mmd", "sk05", "sk05_mmd03", "sk05_m1", "sk01_m1", "sk01_m1_e1")


def flags(spec) -> list[str]:
  if not spec:
    return []
  mmd, cost, eps, marginal, edge = (*spec, 0.0)[:5]
  out = [_SUM, f"--config.loss.kwargs.sinkhorn.eps={eps}",
         f"--config.loss.kwargs.sinkhorn.cost={cost}"]
  if mmd:
    out.append(f"--config.loss.kwargs.gaussian_mmd.weight={mmd}")
  if marginal:
    out.append(f"--config.loss.kwargs.marginal_w2.weight={marginal}")
  if edge:
    out.append(f"--config.loss.kwargs.edge_w2.weight={edge}")
  return out


# The default command as is and with the transport losses (federated, 5 rounds).
FEDERATED = {"fed_mmd": ("default: Gaussian MMD", []),
             "fed_ot_noedge": ("default with Sinkhorn 0.01 + intensity W2",
                               ["--config=benchmarks/loss_choice_config.py",
                                *flags(VARIANTS["sk01_m1"][1])]),
             "fed_ot": ("default with mnist_cpu.py:ot",
                        ["--config=experiments/configs/mnist_cpu.py:ot"])}


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
  extra = flags(VARIANTS[key][1])
  cfg = ["--config=" + os.path.join("benchmarks", "loss_choice_config.py")] if extra else []
  return [*cfg, *CENTRAL, *extra]


def training_seconds(workdir: str, key: str) -> float:
  """Seconds of the training rounds (compilation included, evaluation excluded)."""
  with open(os.path.join(workdir, key, "metrics.jsonl")) as f:
    return sum(json.loads(line).get("seconds") or 0.0 for line in f)


def degraded_real() -> dict[str, float]:
  """Domain-FID (the default run's embedder and test statistics) of 1,000 training digits,
  as they are and degraded: what the metric punishes."""
  import jax
  from scipy import ndimage
  from experiments.configs import mnist_cpu
  from prism_jax import data, evaluation, generator, metrics, train as train_lib
  c = mnist_cpu.get_config()
  splits = data.load(c.dataset, c.image_size)
  ev = evaluation.make_evaluator(generator.ResNetGenerator(c.image_size, 1, c.nz, c.ngf),
                                 splits, 10, jax.random.key(0), 1000,
                                 train_lib.cache_dir(c), c.dataset)
  real = splits["train"].images[:1000].astype(np.float32) / 127.5 - 1.0

  def fid(x):
    return metrics.fid(ev.real_emb, ev.embedder.embed(np.asarray(x, np.float32))[0])

  out = {"real training digits": fid(real)}
  for s in (0.5, 0.75, 1.0, 1.5):
    out[f"Gaussian blur sigma {s} px"] = fid(
        np.stack([ndimage.gaussian_filter(im, (s, s, 0)) for im in real]))
  out["half intensity (grey strokes)"] = fid((real + 1.0) * 0.5 - 1.0)
  out["strokes thickened (2x2 dilation)"] = fid(
      np.stack([ndimage.grey_dilation(im, size=(2, 2, 1)) for im in real]))
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
    ax.set_title(title, fontsize=9)
  for ax in axes.flat:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="runs/loss_choice")
  p.add_argument("--out", default="benchmarks/loss_choice")
  args = p.parse_args()
  def row(key, label, s):
    return {"key": key, "label": label, **{m: s[f"domain_fid_{m}"] for m in MODES},
            "recall_fixed": s["domain_recall_fixed"],
            "train_s": training_seconds(args.workdir, key)}

  central = [row(k, label, train(args.workdir, k, central_args(k)))
             for k, (label, _) in VARIANTS.items()]
  federated = [row(k, label, train(args.workdir, k, a)) for k, (label, a) in FEDERATED.items()]
  degraded = degraded_real()
  with open(args.out + ".json", "w") as f:
    json.dump({"central": central, "federated": federated, "degraded_real": degraded}, f,
              indent=1)
  md = []
  for title, rows in (("loss (central, 3 x 250 steps)", central),
                      ("the default command (federated, 5 rounds)", federated)):
    md += [f"| {title} | domain-FID fixed | resampled | threshold | recall (fixed) | "
           "training s |", "|---|---|---|---|---|---|"]
    md += [f"| {r['label']} | {r['fixed']:.1f} | {r['resampled']:.1f} | {r['threshold']:.1f} "
           f"| {r['recall_fixed']:.2f} | {r['train_s']:.0f} |" for r in rows]
    md.append("")
  md += ["| real digits (1,000 training images) | domain-FID vs the test split |", "|---|---|"]
  md += [f"| {k} | {v:.1f} |" for k, v in degraded.items()]
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(md) + "\n")
  figure(args.workdir, [(k, VARIANTS[k][0].replace(" (`mnist_cpu.py:ot`)", "")) for k in SHOWN],
         os.path.join("results", "loss_choice_samples.png"))
  figure(args.workdir, [(k, FEDERATED[k][0]) for k in ("fed_mmd", "fed_ot")],
         os.path.join("results", "loss_choice_default_samples.png"), cols=2)
  print("\n".join(md))


if __name__ == "__main__":
  main()
