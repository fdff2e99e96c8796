"""Flower apps for deployment: server and clients as separate processes or machines.

The SuperLink routes messages; one SuperNode per client runs ``clientapp``; ``flwr run``
starts ``serverapp`` (see ``deploy/flower/pyproject.toml`` and the README). Both sides build
the same :class:`prism_jax.flower.Deployment` from the config file named by the environment
variable ``PRISM_CONFIG`` (``path.py`` or ``path.py:arg``; default: the offline MNIST CPU
config). A node's ``partition-id`` (``--node-config``) is its client id; here each node
loads the dataset, keeps its own share of the config's split (a real site would load only
its own data) and caches that share on its disk, since Flower starts a ClientApp process
per message. The server writes the final scores to ``PRISM_OUT``, the round metrics to
``PRISM_OUT.jsonl`` and checkpoints every round (``config.deploy``); ``flwr run ...
--run-config resume=true`` continues a stopped server from its last checkpoint.
"""
import hashlib
import importlib.util
import json
import os

from prism_jax import cache, flower, train

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
  """The node's images and real statistics, loaded once and then kept on its disk (keyed
  by the whole config)."""
  def load():
    _, parts, data = train.load_client_data(CONFIG)
    images, stats = flower.split_data(
        train.with_real_stats(DEPLOYMENT.prism, CONFIG, data, parts), client_id)
    return {"images": images, **({"mean": stats[0], "var": stats[1]} if stats else {})}
  key = hashlib.sha1(json.dumps(CONFIG.to_dict(), sort_keys=True, default=str).encode())
  a = cache.arrays(os.path.join(train.cache_dir(CONFIG), "nodes",
                                f"{key.hexdigest()[:16]}-{client_id}.npz"), load)
  return a["images"], ((a["mean"], a["var"]) if "mean" in a else ())


OUT = os.environ.get("PRISM_OUT", "runs/flower_app/scores.npz")
clientapp = flower.client_app(DEPLOYMENT, node_data)
serverapp = flower.server_app(DEPLOYMENT, OUT, options=flower.ServerOptions(**{
    "checkpoint_dir": os.path.join(os.path.dirname(os.path.abspath(OUT)), "checkpoints"),
    **{k: v for k, v in CONFIG.get("deploy", {}).items() if v is not None}}))
