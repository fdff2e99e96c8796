"""Runs a suite of experiments and writes its report from their run directories.

  python -m experiments.results                      # MNIST at CPU scale (offline), ~75 min
  python -m experiments.results --report_only        # rewrite its report from existing runs
  python -m experiments.results --suite=smoke --data_dir=/tmp/tfds   # FMNIST, CIFAR-10, CelebA
  python -m experiments.results --suite=paper --data_dir=~/tensorflow_datasets   # accelerator
  python -m experiments.results --suite=mnist_long   # the paper's regime at CPU scale, ~3 h:
                                                     # RESULTS.md (others: RESULTS-<suite>.md)
  python -m experiments.results --suite=dp --parallel=2   # PBM vs clients per round:
                                                     # 100 clients ~50 min, 1,000 ~8 h
  python -m experiments.results --suite=official --official=/tmp/PRISM_ICLR25 --parallel=2
                                 # prism-jax and the official code, same setting (torch)

Every run is ``python -m experiments.train --config=...`` in its own process, in
``<runs_dir>/<name>``; a finished run (``summary.json``) is reused, an interrupted one
resumed; ``--only`` limits what runs (the report always covers the whole suite) and
``--parallel`` runs several at once. Runs whose dataset is not prepared are skipped and
listed as such. Every number and figure in the report is read from the run directories; the
paper's numbers are quoted beside them, labelled as the paper's. The suites are defined
in :mod:`experiments.suites`, the report written by :mod:`experiments.report`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

from experiments import report as rep
from experiments.suites import COMMITTED_RUNS, SUITES, Run, report_path
from prism_jax import data


def _command(run: Run, workdir: str, official: str | None) -> list[str] | str:
  """The command of a config-file run (``runner``), or why it cannot run."""
  mada = dict(run.overrides)["mada"]
  if run.runner == "official":
    if not official:
      return "skipped: the official runs need --official=PATH (the fetched repository) and torch"
    return [sys.executable, "-m", "benchmarks.official_run", f"--official={official}",
            f"--config={run.setting}", f"--workdir={workdir}", f"--seed={run.seed}",
            f"--mada={str(mada).lower()}"]
  cmd = [sys.executable, "-m", "experiments.train", f"--config={run.setting}",
         f"--workdir={workdir}", f"--config.mada={mada}", f"--config.seed={run.seed}",
         f"--config.train_seed={run.seed}"]
  return cmd + (["--resume"] if os.path.exists(os.path.join(workdir, "config.json")) else [])


def run_one(run: Run, runs_dir: str, data_dir: str | None, official: str | None = None) -> str:
  """Runs (or resumes, or reuses) one experiment; returns its status."""
  workdir = os.path.join(runs_dir, run.name)
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return "reused"
  if run.runner:
    cmd = _command(run, workdir, official)
    if isinstance(cmd, str):
      return cmd
    return _call(cmd, runs_dir, run.name)
  dataset = run.paper_arg.split(",")[0]
  if not data.is_prepared(dataset, data_dir):
    return f"skipped: {dataset} is not prepared ({data.prepare_command(dataset, data_dir)})"
  cmd = [sys.executable, "-m", "experiments.train",
         f"--config=experiments/configs/paper.py:{run.paper_arg}", f"--workdir={workdir}"]
  cmd += [f"--config.{k}={v}" for k, v in run.overrides]
  if run.seed:
    cmd += [f"--config.seed={run.seed}", f"--config.train_seed={run.seed}"]
  if data_dir and dataset != "mnist_offline":
    cmd.append(f"--config.data_dir={data_dir}")
  if os.path.exists(os.path.join(workdir, "config.json")):
    cmd.append("--resume")
  return _call(cmd, runs_dir, run.name)


def _call(cmd: list[str], runs_dir: str, name: str) -> str:
  os.makedirs(runs_dir, exist_ok=True)
  print("$", " ".join(cmd), flush=True)
  with open(os.path.join(runs_dir, f"{name}.log"), "a") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  return "ran" if rc == 0 else f"failed (exit {rc}; see {name}.log)"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--suite", default="mnist_cpu", choices=sorted(SUITES))
  parser.add_argument("--runs_dir", default=None, help="default: runs/results/<suite> "
                      "(mnist_long: results/mnist_long, committed without checkpoints)")
  parser.add_argument("--out", default=None, help="default: RESULTS.md (mnist_long) or "
                      "RESULTS-<suite>.md")
  parser.add_argument("--figures", default="results", help="folder for the report's figures")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir")
  parser.add_argument("--only", default=None, help="comma-separated run names")
  parser.add_argument("--parallel", type=int, default=1, help="runs at a time, each in its "
                      "own process (two on a 2-core CPU: 1.1-1.24x the throughput of one)")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--official", default=os.environ.get("PRISM_OFFICIAL"),
                      help="the fetched official repository (suite official; env "
                      "PRISM_OFFICIAL)")
  parser.add_argument("--note", default="", help="a sentence for the report's header "
                      "(e.g. where the data came from)")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    raise SystemExit(f"--parallel must be at least 1, got {args.parallel}")
  all_runs = runs = SUITES[args.suite]()
  if args.only:
    wanted = set(args.only.split(","))
    unknown = wanted - {r.name for r in runs}
    if unknown:
      raise SystemExit(f"unknown runs {sorted(unknown)} in suite {args.suite}")
    runs = [r for r in runs if r.name in wanted]
  runs_dir = args.runs_dir or COMMITTED_RUNS.get(args.suite) or os.path.join("runs", "results",
                                                                             args.suite)
  out = args.out or report_path(args.suite)
  status = {}
  if not args.report_only:
    def one(run):
      t0 = time.perf_counter()
      status[run.name] = run_one(run, runs_dir, args.data_dir, args.official)
      print(f"{run.name}: {status[run.name]} ({time.perf_counter() - t0:.0f}s)", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
      list(pool.map(one, runs))   # each run is its own process; threads only wait on them
  if args.suite == "official":
    from experiments import official_report
    official_report.report(all_runs, runs_dir, out, args.figures, status)
  else:
    rep.report(args.suite, all_runs, runs_dir, out, args.figures, status, args.note)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
