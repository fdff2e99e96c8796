"""The default run in float32 and in ``precision=bfloat16``, three seeds each: final
domain-FID and legibility of the exported mask, and seconds (issue: bf16 is never the CPU
default, so what it does to quality is measured here).

  python -m benchmarks.bf16_quality [--runs_dir=runs/bf16_quality] [--parallel=2]

Each run is ``python -m experiments.train`` in its own process (an interrupted one resumes,
a finished one is reused); writes ``benchmarks/results/bf16_quality.{json,md}``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys

OUT = os.path.join(os.path.dirname(__file__), "results", "bf16_quality")
SEEDS = (0, 1, 2)
PRECISIONS = ("float32", "bfloat16")


def run(runs_dir: str, precision: str, seed: int) -> dict:
  workdir = os.path.join(runs_dir, f"{precision}-s{seed}")
  summary = os.path.join(workdir, "summary.json")
  if not os.path.exists(summary):
    cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
           f"--config.precision={precision}", f"--config.seed={seed}",
           f"--config.train_seed={seed}"]
    if os.path.exists(os.path.join(workdir, "config.json")):
      cmd.append("--resume")
    os.makedirs(runs_dir, exist_ok=True)
    with open(workdir + ".log", "a") as log:
      subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
  with open(summary) as f:
    s = json.load(f)
  return {"precision": precision, "seed": seed, "domain_fid": s["domain_fid_fixed"],
          "legibility": s["legibility_fixed"], "seconds_total": s["seconds_total"],
          "seconds_per_round": s["seconds_per_round"]}


def markdown(rows: list[dict]) -> str:
  lines = ["| precision | seeds | domain-FID (fixed mask), mean ± sd (per seed) | legibility | "
           "seconds per round (median over seeds) |", "|---|---|---|---|---|"]
  for p in PRECISIONS:
    rs = [r for r in rows if r["precision"] == p]
    fid = [r["domain_fid"] for r in rs]
    leg = [r["legibility"] for r in rs]
    lines.append(f"| {p} | {len(rs)} | {statistics.mean(fid):.1f} ± {statistics.stdev(fid):.1f}"
                 f" ({', '.join(f'{x:.1f}' for x in fid)}) | {statistics.mean(leg):.3f} | "
                 f"{statistics.median(r['seconds_per_round'] for r in rs):.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs_dir", default=os.path.join("runs", "bf16_quality"))
  p.add_argument("--parallel", type=int, default=1)
  a = p.parse_args(argv)
  jobs = [(pr, s) for pr in PRECISIONS for s in SEEDS]
  with concurrent.futures.ThreadPoolExecutor(a.parallel) as pool:
    rows = list(pool.map(lambda job: run(a.runs_dir, *job), jobs))
  with open(OUT + ".json", "w") as f:
    json.dump(rows, f, indent=1)
  with open(OUT + ".md", "w") as f:
    f.write(markdown(rows))
  print(markdown(rows))


if __name__ == "__main__":
  main()
