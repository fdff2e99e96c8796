"""Flower apps for deployment: server and clients as separate processes or machines.

The SuperLink routes messages; one SuperNode per client runs the ClientApp
(``experiments.flower.client``, which hands each round to the node's worker running
``NODE`` here); ``flwr run`` starts ``serverapp`` (see ``deploy/flower/pyproject.toml`` and
docs/deployment.md). Both sides build
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
import json
import os

from experiments.flower.client import SPEC, load_config
from prism_jax import client_data, configure
from prism_jax import cache, flower

CONFIG = load_config(SPEC)
DEPLOYMENT = flower.Deployment.from_config(CONFIG)


def node_data(client_id: int):
  """The node's images and real statistics, loaded once and then kept on its disk (keyed
  by the whole config; ``config.deploy.node_cache``)."""
  def load():
    _, parts, data = client_data.load_client_data(CONFIG)
    images, stats = flower.split_data(
        client_data.with_real_stats(DEPLOYMENT.prism, CONFIG, data, parts), client_id)
    return {"images": images, **({"mean": stats[0], "var": stats[1]} if stats else {})}
  key = hashlib.sha1(json.dumps(CONFIG.to_dict(), sort_keys=True, default=str).encode())
  path = os.path.join(configure.cache_dir(CONFIG), "nodes", f"{key.hexdigest()[:16]}-{client_id}.npz")
  a = cache.arrays(path if CONFIG.deploy.node_cache else None, load)
  return a["images"], ((a["mean"], a["var"]) if "mean" in a else ())


OUT = os.environ.get("PRISM_OUT", "runs/flower_app/scores.npz")
NODE = flower.Node(DEPLOYMENT, node_data)    # what a node's worker (or ClientApp) runs
serverapp = flower.server_app(DEPLOYMENT, OUT, options=flower.ServerOptions(**{
    "checkpoint_dir": os.path.join(os.path.dirname(os.path.abspath(OUT)), "checkpoints"),
    **{k: v for k, v in CONFIG.deploy.items() if v is not None and k not in ("node_cache", "worker")}}))
