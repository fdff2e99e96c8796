"""Runs a PRISM experiment from a config file.

  python -m experiments.train                                   # offline MNIST default
  python -m experiments.train --config.rounds=5 --workdir=runs/quick
  python -m experiments.train --config=experiments/configs/mnist_cpu.py --config.split=shards
  python -m experiments.train --workdir=runs/mnist_cpu --resume     # after an interruption
  python -m experiments.train --multihost ...   # one process per host (docs/scaling.md, "More than
                                                # one machine")
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.configs import overrides
from prism_jax import multihost, train

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "mnist_cpu.py")
overrides.check_argv(overrides.load_config_file(overrides.prescan("config", _DEFAULT)))
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_cpu", "Where the run writes its outputs.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest "
                            "checkpoint (bit-identical to an uninterrupted run).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "One process of a multi-host run "
                               "(jax.distributed); the three flags below are detected on TPU "
                               "pod slices, SLURM and Open MPI, else required.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if _MULTIHOST.value:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  train.train(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)


if __name__ == "__main__":
  app.run(main)
