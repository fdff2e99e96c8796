"""Runs a PRISM experiment from a config file.

  python -m experiments.train                                   # offline MNIST default
  python -m experiments.train --config.rounds=5 --workdir=runs/quick
  python -m experiments.train --config=experiments/configs/mnist_cpu.py --config.split=shards
  python -m experiments.train --workdir=runs/mnist_cpu --resume     # after an interruption
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from prism_jax import train

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "mnist_cpu.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_cpu", "Where the run writes its outputs.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest "
                            "checkpoint (bit-identical to an uninterrupted run).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  train.train(_CONFIG.value, _WORKDIR.value, resume=_RESUME.value)


if __name__ == "__main__":
  app.run(main)
