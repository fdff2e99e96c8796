"""Overrides of config fields, with an error that says what to do when a field is missing.

``--config.features_kwargs.weights=w.npz`` on a config whose ``features_kwargs`` is empty
used to stop with ml_collections' bare ``AttributeError: "'weights'"``. :func:`check_argv`
(run by the experiment mains before they define the config flag) and :func:`override`
(the same from Python) name the flag, list the fields that exist at that level, and point
to a config that has the field.
"""
from __future__ import annotations

import difflib
import sys


def _candidates():
  """Configs searched for a field the chosen one lacks, with the way to choose each."""
  from experiments.configs import paper
  yield ("--config=experiments/configs/paper.py:mnist_offline,dirichlet (the paper's setting)",
         paper.get_config("mnist_offline,dirichlet"))


def _lookup(config, path: list[str]):
  """``(found, node, missing_key, depth)`` for a path in a ConfigDict: the node reached (the
  field's value, or the level that lacks ``missing_key``) and how many keys matched."""
  node = config
  for i, key in enumerate(path):
    fields = node.keys() if hasattr(node, "keys") else []
    if key not in fields:
      return False, node, key, i
    node = node[key]
  return True, node, None, len(path)


def missing_field_message(config, dotted: str, flag: str | None = None) -> str | None:
  """None if ``dotted`` (``"a.b.c"``) is a field of ``config``, else what to do about it."""
  path = dotted.split(".")
  found, level, key, depth = _lookup(config, path)
  if found:
    return None
  where = ".".join(path[:depth]) or "the config"
  fields = sorted(level.keys()) if hasattr(level, "keys") else []
  msg = (f"{flag or dotted}: the chosen config has no field {key!r} in {where} (its fields: "
         f"{', '.join(fields) if fields else 'none'})")
  close = difflib.get_close_matches(key, fields, n=1)
  if close:
    msg += f"; did you mean {'.'.join(path[:depth] + close)!r}?"
  for how, other in _candidates():
    if _lookup(other, path)[0]:
      msg += f". The field exists in another config: choose it with {how}"
      break
  return msg


def override(config, dotted: str, value):
  """``config.<dotted> = value`` from Python, refusing (ValueError) a field the config lacks
  with :func:`missing_field_message`'s explanation."""
  msg = missing_field_message(config, dotted)
  if msg:
    raise ValueError(msg)
  *parents, last = dotted.split(".")
  _lookup(config, parents)[1][last] = value
  return config


def load_config_file(spec: str, what: str = "--config"):
  """The config of a ``--config`` value, ``path[:argument]`` (``get_config(argument)``);
  ``what`` names where the spec came from in the error for a missing file."""
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_prism_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"{what}: no config file {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def check_argv(config, argv=None, flag: str = "config") -> None:
  """Exits with :func:`missing_field_message` if an override ``--<flag>.<path>=...`` in
  ``argv`` names a field ``config`` lacks. Run it before ``config_flags.DEFINE_config_*``,
  which reads the overrides' types from ``sys.argv`` as it is defined."""
  prefix = f"--{flag}."
  for arg in (sys.argv if argv is None else argv)[1:]:
    if arg.startswith(prefix):
      name = arg.split("=", 1)[0]
      msg = missing_field_message(config, name[len(prefix):], name)
      if msg:
        raise SystemExit(f"FATAL: {msg}")


def prescan(name: str, default: str, argv=None) -> str:
  """The value of ``--name`` in ``argv`` before absl parses flags."""
  argv = sys.argv if argv is None else argv
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return default
