"""The paper's MNIST setting at CPU scale, run by both implementations (``--suite=official``).

``paper.py:mnist_offline,dirichlet`` (Dirichlet(0.005) over 10 clients, all of them every
round; the official behaviours: Adam 0.1 with b1 0.5 on the scores and the probability
estimator, each client's optimizer and GFMN nets kept across rounds, PyTorch's fan-in, GFMN
moment matching with its moving-average nets at learning rate 1e-5, MADA over the state
dict's keys) with three reductions so that a run fits a 2-core CPU: a generator of ngf 8
(170,120 masked weights), fewer local steps and rounds, and as the feature network the
offline ``cnn`` extractor (a small CNN trained on the held-out half of MNIST's validation
split, which no client owns) in place of ImageNet VGG19, whose weights cannot be fetched
here. ``benchmarks.official_run`` hands the same network, in torch, to the official code.

``--config=experiments/configs/official_cpu.py:smoke``: 2 rounds of 2 local steps.
"""
import ml_collections

from experiments.configs import paper


def get_config(variant: str = ""):
  c = paper.get_config("mnist_offline,dirichlet")
  c.setting = "official_cpu"
  c.ngf = 8
  c.features, c.features_kwargs = "cnn", ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict({"name": "gfmn", "kwargs": {"learning_rate": 1e-5,
                                                                 "v_init": "torch"}})
  c.local.local_steps = 20
  c.rounds = 20
  c.eval.every = c.sample_every = c.checkpoint_every = 5
  c.eval.num_samples = 1000
  c.eval.modes = ("fixed", "resampled")
  if variant == "smoke":
    c.local.local_steps, c.rounds = 2, 2
    c.eval.every = c.sample_every = c.checkpoint_every = 1
    c.eval.num_samples = 200
  elif variant:
    raise ValueError(f"official_cpu.py: unknown variant {variant!r}; choose 'smoke' or none")
  return c
