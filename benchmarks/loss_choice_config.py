"""``mnist_cpu.py:mmd`` with an empty ``loss.kwargs`` that accepts the ``sum`` loss's terms
from the command line (``--config.loss.kwargs.sinkhorn.eps=0.01``)."""
import ml_collections

from experiments.configs import mnist_cpu


def get_config():
  c = mnist_cpu.get_config("mmd")
  c.loss.kwargs = ml_collections.ConfigDict({
      "sinkhorn": {"eps": 0.05, "cost": "sq", "weight": 1.0},
      "gaussian_mmd": {"weight": 0.0, "bandwidths": (0.01, 0.03, 0.1, 0.3, 1.0)},
      "marginal_w2": {"weight": 0.0}, "edge_w2": {"weight": 0.0}})
  return c
