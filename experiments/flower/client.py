"""The deployment's ``ClientApp``, kept light: Flower starts a process for every message, and
this module imports neither JAX nor the library's training code. Each round goes to the
node's long-lived worker (``experiments.flower.worker``, started by the first message), which
keeps the node's data and compiled update between rounds; with ``config.deploy.worker=False``
the round runs in the ClientApp process itself. Config: ``PRISM_CONFIG`` (``path.py`` or
``path.py:arg``; default: the offline MNIST CPU config), as for the server.
"""
import hashlib
import os
import sys

from experiments.configs import overrides
from prism_jax.flower import worker

DEFAULT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "mnist_cpu.py")
SPEC = os.environ.get("PRISM_CONFIG", DEFAULT)


def load_config(spec: str):
  """A config from ``path.py`` or ``path.py:arg`` (as ``--config=`` takes it)."""
  return overrides.load_config_file(spec, "PRISM_CONFIG")


def worker_key(spec: str = SPEC) -> str:
  """Names the deployment's workers: the config spec and the config file's bytes."""
  with open(spec.partition(":")[0], "rb") as f:
    return hashlib.sha1(spec.encode() + f.read()).hexdigest()[:16]


def _in_process(cid, content, state):
  from experiments.flower import app as flower_app   # JAX and the data, in this process, every message
  return flower_app.NODE.train(cid, content, state)


def _start(cid: int, socket: str) -> list[str]:
  return [sys.executable, "-m", "experiments.flower.worker", f"--client_id={cid}",
          f"--socket={socket}"]


if load_config(SPEC).deploy.get("worker", True):
  clientapp = worker.worker_client_app(worker_key(), _start)
else:
  clientapp = worker.client_app(_in_process)
