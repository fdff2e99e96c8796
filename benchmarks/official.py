"""The official PRISM code (``tjrudrnr2/PRISM_ICLR25``), imported from where it was fetched.

Nothing of it is copied here: :func:`load` puts the fetched repository on ``sys.path`` and
imports its modules unmodified. What it imports but never runs in the parts used here
(torchvision's datasets and image writer, wandb, seaborn, scikit-learn, pandas, prdc) is
replaced by inert stand-ins when it is not installed, so PyTorch alone suffices (a CPU
build of torch cannot load a CUDA build's torchvision). The context managers hand the
official code this project's random draws: ``torch.bernoulli`` returns given masks (keyed
by shape, so no bit is redrawn from ``u < theta`` in another framework's rounding),
``torch.randn`` given latents, ``Bernoulli(theta).sample()`` given masks.

  pip install torch==2.13.0            # CPU build; torchvision is optional
  git clone https://github.com/tjrudrnr2/PRISM_ICLR25 /tmp/PRISM_ICLR25
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections import defaultdict, deque

import numpy as np

OPTIONAL = ("torchvision", "wandb", "seaborn", "sklearn", "pandas", "prdc")


class _Inert(type):
  """A class whose every attribute is another such class: import-time uses (subclassing,
  decorators, constants such as ``InterpolationMode.BILINEAR``) succeed; using one fails."""

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Inert(name, (), {})

  def __call__(cls, *args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
      return args[0]                       # used as a decorator
    return _Inert(cls.__name__, (), {})


class _InertModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Inert(name, (), {})


class _InertFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def __init__(self, roots):
    self.roots = set(roots)

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in self.roots:
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _InertModule(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


def _missing(names):
  out = []
  for name in names:
    try:
      importlib.import_module(name)
    except Exception:   # noqa: BLE001  (not installed, or installed but unloadable)
      sys.modules.pop(name, None)
      out.append(name)
  return out


def load(repo: str) -> types.SimpleNamespace:
  """The official modules used here, imported from the fetched repository ``repo``."""
  if not hasattr(load, "_finder"):
    load._finder = _InertFinder(_missing(OPTIONAL))
    sys.meta_path.append(load._finder)
  if repo not in sys.path:
    sys.path.insert(0, repo)
  utils = importlib.import_module("utils.utils")
  if not hasattr(utils, "compare_mask"):
    # servers/prism.py imports a ``compare_mask`` that the published utils/utils.py does not
    # define (it is never called): without it the official server cannot be imported at all.
    def compare_mask(*args, **kwargs):
      raise NotImplementedError("compare_mask is not in the official repository")
    utils.compare_mask = compare_mask
  mods = {name: importlib.import_module(path) for name, path in (
      ("client", "clients.prism"), ("server", "servers.prism"), ("model", "models.prism"),
      ("vgg", "models.vgg_pytorch"), ("classifier", "models.load_classifier"),
      ("model_utils", "models.model_utils"), ("utils", "utils.utils"),
      ("options", "src.options"), ("random", "utils.random"))}
  return types.SimpleNamespace(**mods)


def args(off, **overrides) -> argparse.Namespace:
  """The official command-line defaults (``src/options.py``) with ``overrides``."""
  saved, sys.argv = sys.argv, [sys.argv[0]]
  try:
    a = off.options.args_parser()
  finally:
    sys.argv = saved
  for k, v in overrides.items():
    if not hasattr(a, k):
      raise ValueError(f"the official options have no {k!r}")
    setattr(a, k, v)
  return a


def offline_vgg(off) -> None:
  """The official VGG19 builder without its pretrained download (random weights)."""
  if not getattr(off.vgg, "_offline", False):
    orig = off.vgg.vgg19_bn
    off.vgg.vgg19_bn = lambda pretrained=False, **kw: orig(False, **kw)
    off.vgg._offline = True


@contextlib.contextmanager
def given_draws(bernoulli=(), randn=(), distribution_samples=()):
  """Within the block, the official code's random draws return the given arrays in order:
  ``torch.bernoulli(p)`` the next mask of ``p``'s shape (``Bern``'s forward; a shape with no
  mask left is drawn as usual: the unused bias scores), ``torch.randn(*shape)`` the next
  latent of that shape, ``torch.distributions.Bernoulli(p).sample()`` the next given mask
  of that shape (MADA's ``compare_global_mask``). Every given array must be used."""
  import torch
  queues = {name: defaultdict(deque) for name in ("bernoulli", "randn", "sample")}
  for name, arrays in (("bernoulli", bernoulli), ("randn", randn),
                       ("sample", distribution_samples)):
    for a in arrays:
      queues[name][tuple(np.shape(a))].append(np.asarray(a, np.float32))
  orig = torch.bernoulli, torch.randn, torch.distributions.Bernoulli.sample

  def take(name, shape, fallback):
    q = queues[name].get(tuple(shape))
    return torch.from_numpy(q.popleft().copy()) if q else fallback()

  def bernoulli_(p, *a, **kw):
    return take("bernoulli", p.shape, lambda: orig[0](p, *a, **kw)).to(p.dtype)

  def randn_(*size, **kw):
    shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    return take("randn", shape, lambda: orig[1](*size, **kw))

  def sample_(self, sample_shape=torch.Size()):
    return take("sample", self.probs.shape, lambda: orig[2](self, sample_shape))

  torch.bernoulli, torch.randn, torch.distributions.Bernoulli.sample = (bernoulli_, randn_,
                                                                         sample_)
  try:
    yield
  finally:
    torch.bernoulli, torch.randn, torch.distributions.Bernoulli.sample = orig
  left = {n: sum(len(q) for q in qs.values()) for n, qs in queues.items()}
  if any(left.values()):
    raise RuntimeError(f"given draws left unused: {left}")
