"""Flower apps for deployment: server and clients as separate processes or machines.

The SuperLink routes messages; one SuperNode per client runs ``clientapp``; ``flwr run``
starts ``serverapp`` (see ``deploy/flower/pyproject.toml`` and the README). Both sides build
the same :class:`prism_jax.flower.Deployment` from the config file named by the environment
variable ``PRISM_CONFIG`` (``path.py`` or ``path.py:arg``; default: the offline MNIST CPU
config). A node's ``partition-id`` (``--node-config``) is its client id; here each node
loads the dataset and keeps its own share of the config's split (a real site would load
only its own data). The server writes the final scores to ``PRISM_OUT``.
"""
import importlib.util
import os

from prism_jax import flower, train

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "mnist_cpu.py")


def load_config(spec: str):
  """A config from ``path.py`` or ``path.py:arg`` (as ``--config=`` takes it)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("prism_flower_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"PRISM_CONFIG: no config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


CONFIG = load_config(os.environ.get("PRISM_CONFIG", _DEFAULT))
DEPLOYMENT = flower.Deployment.from_config(CONFIG)


def node_data(client_id: int):
  _, parts, data = train.load_client_data(CONFIG)
  data = train.with_real_stats(DEPLOYMENT.prism, CONFIG, data, parts)
  return flower.split_data(data, client_id)


clientapp = flower.client_app(DEPLOYMENT, node_data)
serverapp = flower.server_app(DEPLOYMENT, os.environ.get("PRISM_OUT", "runs/flower_app/scores.npz"))
