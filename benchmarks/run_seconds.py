"""Training time and final quality of finished run directories, side by side: the
before/after table of a speed change (run both on the same machine in the same hour).

  python -m benchmarks.run_seconds before=runs/a after=runs/b --out=benchmarks/results/x.json

Per run: each round's seconds (round 1 includes the round step's compilation), their sum
(training), the whole command's seconds (``summary.json``: evaluations and checkpoints too),
and the exported mask's domain-FID and legibility.
"""
from __future__ import annotations

import argparse
import json
import os


def summarize(workdir: str) -> dict:
  """One run directory's seconds and final quality."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(workdir, "summary.json")) as f:
    s = json.load(f)
  rounds = [r["seconds"] for r in rows if "seconds" in r]
  return {"round_seconds": rounds, "training_seconds": sum(rounds),
          "seconds_total": s["seconds_total"], "domain_fid": s["domain_fid_fixed"],
          "legibility": s["legibility_fixed"]}


def markdown(runs: dict[str, dict]) -> str:
  lines = ["| run | seconds per round | training s | whole run s | domain-FID (fixed mask) | "
           "legibility |", "|---|---|---|---|---|---|"]
  for name, r in runs.items():
    lines.append(f"| {name} | {', '.join(f'{x:.1f}' for x in r['round_seconds'])} | "
                 f"{r['training_seconds']:.0f} | {r['seconds_total']:.0f} | "
                 f"{r['domain_fid']:.1f} | {r['legibility']:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="name=workdir")
  p.add_argument("--out", default=None, help="JSON file for the table's numbers")
  a = p.parse_args(argv)
  runs = {}
  for spec in a.runs:
    name, sep, workdir = spec.partition("=")
    if not sep:
      raise SystemExit(f"expected name=workdir, got {spec!r}")
    runs[name] = summarize(workdir)
  print(markdown(runs))
  if a.out:
    with open(a.out, "w") as f:
      json.dump(runs, f, indent=1)


if __name__ == "__main__":
  main()
