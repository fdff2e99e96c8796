"""The suites of experiments: each a list of :class:`Run` (a config and its overrides,
seed and label). :mod:`experiments.results` runs them, :mod:`experiments.report` writes
their reports.
"""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  dataset: str               # experiments/configs/paper.py's dataset (mnist + "offline":
  setting: str               # mnist_offline), its split and flags: ``paper_arg``
  overrides: tuple = ()      # extra --config.<k>=<v>
  label: str = ""            # method as shown in the tables
  seed: int = 0              # frozen-weight and training seed (config.seed, config.train_seed)
  # "prism_jax": experiments.train on the config file ``setting``; "official": the official
  # code's loop on it (benchmarks.official_run, needs torch and --official); None: the
  # paper configs' setting, experiments.train --config=experiments/configs/paper.py:...
  runner: str | None = None

  @property
  def paper_arg(self) -> str:
    """experiments/configs/paper.py's argument: dataset, split and flags."""
    parts = [p for p in self.setting.split(",") if p]
    dataset = self.dataset
    if "offline" in parts:
      parts.remove("offline")
      dataset = "mnist_offline"
    return ",".join([dataset, *parts])

  @property
  def split(self) -> str:
    if self.runner:   # a config file: the official_cpu setting's split
      return "dirichlet"
    return next(p for p in self.setting.split(",") if p in ("iid", "shards", "dirichlet"))


# The paper's regime at CPU scale: all 10 clients every round, 150 rounds, the official
# behaviours of the `cpu` setting (carried optimizer state, PyTorch fan-in, three evaluation
# views); ngf 8 and 5 local steps so that a run takes about 15 minutes on 2 CPU cores. Mask
# methods use the default run's straight-through estimator and Adam 0.3 (docs/default.md, "Choosing
# the default"); dense FedAvg keeps its own learning rate.
LONG_ROUNDS = 150
LONG_OVERRIDES = (("rounds", LONG_ROUNDS), ("clients_per_round", 10), ("ngf", 8),
                  ("local.local_steps", 5), ("eval.every", 10), ("sample_every", 50),
                  ("checkpoint_every", 10))
LONG_MASKS = (("local.estimator", "ste"), ("local.learning_rate", 0.3))
LONG_SEEDS = (0, 1, 2)


def _mnist_long() -> list[Run]:
  runs, masks = [], LONG_OVERRIDES + LONG_MASKS
  for split in ("dirichlet", "iid"):   # the MADA comparison over seeds first
    s = f"{split},offline,cpu"
    for seed in LONG_SEEDS if split == "dirichlet" else (0,):
      tag = "" if seed == 0 else f"-s{seed}"
      runs += [Run(f"{split}-prism{tag}", "mnist", s, masks, "PRISM", seed),
               Run(f"{split}-nomada{tag}", "mnist", s + ",nomada", masks, "PRISM w/o MADA",
                   seed)]
    runs += [Run(f"{split}-fedpm", "mnist", s + ",fedpm", masks, "FedPM (Beta posterior)"),
             Run(f"{split}-fedavg", "mnist", s + ",fedavg", LONG_OVERRIDES, "dense FedAvg")]
  # 5x longer rounds (25 local steps), 15 of them (half the client steps): with 5 local
  # steps MADA's damping outweighs the little each client moves; does it help when clients
  # move further between aggregations?
  longer = masks + (("rounds", 15), ("local.local_steps", 25), ("eval.every", 3),
                    ("checkpoint_every", 3))
  runs += [Run(f"dirichlet-{tag}-l25", "mnist", "dirichlet,offline,cpu" + extra, longer,
               f"{label}, 25 local steps")
           for tag, extra, label in (("prism", "", "PRISM"),
                                     ("nomada", ",nomada", "PRISM w/o MADA"))]
  return runs


# Client-level DP with 1-bit uploads (prism_jax.pbm): its guarantee improves with the number
# of clients summed per round, so the suite splits offline MNIST over 100 and 1,000 clients,
# all taking part every round, with a small generator (16x16, ngf 8: 17,544 weights;
# stateless clients, run 50 at a time per device). 40 rounds of 20 local steps: at ngf 4, 30
# rounds of 5 left the non-private model near its random start (165 -> 132), where no mechanism
# can be told apart; fewer, longer rounds also compose fewer private releases. At ngf 4 (6,452
# weights) neither 100 clients (domain-FID 128-135 after 10 rounds at Adam 0.03-0.3) nor one
# client training alone (64-193 over training seeds and data sizes) drew digits, while ngf 8
# reached 34.7 in 10 rounds over 100 clients. MADA is off, as in the default run: with IID
# clients it keeps most of the previous scores each round and slowed the mnist_long suite's
# IID PRISM to domain-FID 135 against 69.5 without it.
DP_CLIENTS = (100, 1000)
# Largest epsilon first: it alone decides the verdict, so an interrupted suite has it.
DP_EPSILONS = (10.0, 3.0, 1.0)
DP_OVERRIDES = (("image_size", 16), ("nz", 16), ("ngf", 8), ("local.local_steps", 20),
                ("local.batch_size", 32), ("local.carry_optimizer", False), ("rounds", 40),
                ("eval.every", 10), ("sample_every", 30), ("checkpoint_every", 5),
                ("client_chunk", 50), ("mada", False)) + LONG_MASKS


def _dp() -> list[Run]:
  runs = []
  for n in DP_CLIENTS:
    base = DP_OVERRIDES + (("num_clients", n), ("clients_per_round", n))
    at = f", {n:,} clients"
    runs.append(Run(f"n{n}-prism", "mnist", "iid,offline,cpu", base, "PRISM (no DP)" + at))
    runs += [Run(f"n{n}-pbm-eps{e:g}", "mnist", "iid,offline,cpu",
                 base + (("dp.mechanism", "pbm"), ("dp.epsilon", e)),
                 f"PRISM + PBM, eps {e:g}" + at) for e in DP_EPSILONS]
    runs.append(Run(f"n{n}-gaussian-eps10", "mnist", "iid,offline,cpu",
                    base + (("dp.epsilon", 10.0),), "PRISM, noise on theta, eps 10" + at))
  return runs


def _mnist_cpu() -> list[Run]:
  runs = []
  for split in ("iid", "shards", "dirichlet"):
    s = f"{split},offline,cpu"
    runs += [Run(f"{split}-prism", "mnist", s, label="PRISM"),
             Run(f"{split}-nomada", "mnist", s + ",nomada", label="PRISM w/o MADA")]
    if split != "shards":
      runs += [Run(f"{split}-fedpm", "mnist", s + ",fedpm", label="FedPM (Beta posterior)"),
               Run(f"{split}-fedavg", "mnist", s + ",fedavg", label="dense FedAvg")]
  runs += [Run("dirichlet-dp", "mnist", "dirichlet,offline,cpu,dp", label="PRISM, DP eps 9.8"),
           Run("dirichlet-dp-sigma0.05", "mnist", "dirichlet,offline,cpu",
               (("local.dp_noise_std", 0.05),), label="PRISM, DP sigma 0.05"),
           Run("iid-alpha", "mnist", "iid,offline,cpu,alpha", label="PRISM-alpha (0.25)")]
  return runs


def _non_iid(dataset: str) -> str:
  """The paper's non-IID split: Dirichlet(0.005), or for CelebA (two attribute values, so a
  Dirichlet split would leave clients empty) male / female clients (shards, divide 1)."""
  return "shards" if dataset == "celeb_a" else "dirichlet"


def _smoke() -> list[Run]:
  return [Run(f"{d}-{split}-{m}", d, f"{split},smoke" + ("" if m == "prism" else f",{m}"),
              label={"prism": "PRISM", "fedavg": "dense FedAvg", "dp": "PRISM, DP eps 9.8"}[m])
          for d in ("fashion_mnist", "cifar10", "celeb_a")
          for split, m in ((_non_iid(d), "prism"), ("iid", "fedavg"), ("iid", "dp"))]


OFFICIAL_CONFIG = os.path.join("experiments", "configs", "official_cpu.py")
OFFICIAL_SEEDS = (0, 1)


def _official() -> list[Run]:
  """Both implementations on the same CPU-scale paper setting, with and without MADA."""
  return [Run(f"{impl}-{'mada' if mada else 'nomada'}-s{seed}", "mnist_offline",
              OFFICIAL_CONFIG, (("mada", mada),), label=impl, seed=seed, runner=impl)
          for seed in OFFICIAL_SEEDS for mada in (True, False)
          for impl in ("prism_jax", "official")]


def _paper() -> list[Run]:
  runs = []
  for d in ("mnist", "fashion_mnist", "cifar10", "celeb_a"):
    for split in ("iid", _non_iid(d)):
      runs += [Run(f"{d}-{split}-prism", d, split, label="PRISM"),
               Run(f"{d}-{split}-nomada", d, split + ",nomada", label="PRISM w/o MADA")]
    runs.append(Run(f"{d}-{_non_iid(d)}-dp", d, f"{_non_iid(d)},dp", label="PRISM, DP eps 9.8"))
  return runs


MAIN_SUITE = "mnist_long"   # its report is RESULTS.md


def report_path(suite: str) -> str:
  return "RESULTS.md" if suite == MAIN_SUITE else f"RESULTS-{suite}.md"


SUITES = {"mnist_cpu": _mnist_cpu, "smoke": _smoke, "paper": _paper, "mnist_long": _mnist_long,
          "official": _official,
          "dp": _dp}
# Suites whose finished runs are kept in the repository (checkpoints and event files are
# ignored), so that a long suite continues on another machine from its finished runs.
COMMITTED_RUNS = {"mnist_long": os.path.join("results", "mnist_long"),
                  "dp": os.path.join("results", "dp"),
                  "official": os.path.join("results", "official")}
