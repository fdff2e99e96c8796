"""What more training buys the default run: its config (``python -m experiments.train``)
for ``--rounds`` rounds, with quality after every round against cumulative training time,
and the fixed-mask sample grids at a few rounds side by side; ``--config`` measures another
config the same way (further ``--config.<field>=...`` flags pass through).

  python -m benchmarks.default_quality --workdir=runs/default_quality --rounds=8   # ~12 min
  python -m benchmarks.default_quality --config=experiments/configs/mnist_cpu.py:mmd \
      --workdir=runs/mmd_quality --name=mmd_quality --rounds=20                 # ~25 min

The reports named ``digits_*`` ran the default curriculum when it was the ``:digits``
variant, with the refining rounds' local steps their names or docs/default.md give
(``--config.refine.local_steps=N``); those named ``default_*`` before it ran the one-loss
default, now ``:mmd``.

The run resumes from its workdir if interrupted. Writes ``benchmarks/<name>.{json,md}`` and
``results/<name>_samples.png`` (name: ``default_quality``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

MODES = ("fixed", "resampled", "threshold")


def run(workdir: str, rounds: int, config: str | None = None, flags: tuple = ()) -> None:
  """The config (default: the default's) for ``rounds`` rounds, with further ``--config.*``
  ``flags`` (resumed if the workdir holds a checkpoint)."""
  resume = ["--resume"] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
  chosen = [f"--config={config}"] if config else []
  subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *chosen,
                  *flags, f"--config.rounds={rounds}", *resume], check=True)


def rows(workdir: str) -> list[dict]:
  """Per evaluated round: cumulative training seconds, domain-FID of the three views, mask
  entropy, legibility of the fixed mask (None in runs from before it was logged)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics = [json.loads(line) for line in f]
  out, seconds = [], 0.0
  for m in metrics:
    seconds += m.get("seconds", 0.0)
    if m.get("round", 0) >= 1 and "domain_fid_fixed" in m:
      out.append({"round": m["round"], "train_s": seconds,
                  **{f"fid_{k}": m[f"domain_fid_{k}"] for k in MODES},
                  "precision_fixed": m["domain_precision_fixed"],
                  "recall_fixed": m["domain_recall_fixed"],
                  "mask_entropy_bits": m["mask_entropy_bits"],
                  "legibility_fixed": m.get("legibility_fixed")})
  return out


def grids_figure(workdir: str, rounds: list[int], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(rounds), figsize=(3.2 * len(rounds), 3.5))
  for ax, r in zip(np.atleast_1d(axes), rounds):
    ax.imshow(plt.imread(os.path.join(workdir, f"samples_r{r:04d}.png")), cmap="gray")
    ax.set_title(f"round {r}", fontsize=10)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/default_quality")
  p.add_argument("--rounds", type=int, default=20)
  p.add_argument("--config", default=None, help="config file[:variant] (default: the default)")
  p.add_argument("--name", default="default_quality", help="report and figure file names")
  p.add_argument("--report_only", action="store_true")
  args, flags = p.parse_known_args()
  bad = [f for f in flags if not f.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (only --config.<field>=... pass through)")
  out = os.path.join(os.path.dirname(__file__), "results", args.name)
  if not args.report_only:
    run(args.workdir, args.rounds, args.config, tuple(flags))
  table = rows(args.workdir)
  shown = sorted({5, args.rounds // 2, args.rounds} & {r["round"] for r in table})
  grids_figure(args.workdir, shown, os.path.join("results", f"{args.name}_samples.png"))
  legible = any(r["legibility_fixed"] is not None for r in table)
  lines = ["| round | training s (cumulative) | domain-FID fixed | resampled | threshold | "
           "precision / recall (fixed) | mask entropy (bit/weight) |"
           + (" legibility (fixed) |" if legible else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if legible else "")]
  lines += [f"| {r['round']} | {r['train_s']:.0f} | {r['fid_fixed']:.1f} | "
            f"{r['fid_resampled']:.1f} | {r['fid_threshold']:.1f} | "
            f"{r['precision_fixed']:.2f} / {r['recall_fixed']:.2f} | "
            f"{r['mask_entropy_bits']:.2f} |"
            + (f" {r['legibility_fixed']:.2f} |" if legible else "") for r in table]
  print("\n".join(lines))
  with open(out + ".json", "w") as f:
    json.dump({"workdir": args.workdir, "config": args.config, "flags": flags, "rows": table,
               "grids": shown}, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
