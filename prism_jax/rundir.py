"""A run directory: its saved config and the check that a resumed run computes what the
saved one did, the downlink ledger saved beside the checkpoints, and atomic JSON writes.
"""
from __future__ import annotations

import json
import os

from prism_jax import downlink


def write_json(path, obj):
  """Writes ``obj`` as JSON to ``path`` atomically (a crash leaves the old file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


# Config fields a resumed run may change (they do not change the computation).
RESUMABLE = ("rounds", "sample_every", "checkpoint_every", "keep_checkpoints", "eval", "coding",
             "cache_dir", "data_dir", "download")


# Config fields (dotted paths) added after runs were first saved, each with the test that a
# value keeps the computation such a run did (a saved run without the field resumes if it
# passes).
GREY = ("mnist", "mnist_offline", "fashion_mnist")
ADDED = {"refine": lambda v, c: (v or {}).get("start") is None,
         "refine.local_steps": lambda v, c: v is None,
         # fields added since: (value, whole config) -> the run computes what it did before
         "lambda_counts": lambda v, c: v == "weights" or not c.get("mada", True),
         "local.sampling": lambda v, c: v == "uniform" or c["loss"]["name"] == "gfmn",
         "features_kwargs.layers": lambda v, c: (
             v == "last" or c["features_kwargs"].get("num_layers", 16) == 16),
         "features_kwargs.fake_range": lambda v, c: v == "same" or c["dataset"] in GREY,
         "precision": lambda v, c: v == "float32"}


def without_added(saved: dict, now: dict) -> dict:
  """``now`` without the :data:`ADDED` fields that ``saved`` lacks and that keep its run."""
  now = json.loads(json.dumps(now))
  for path, keeps in ADDED.items():
    *parents, leaf = path.split(".")
    s, n = saved, now
    for p in parents:
      s, n = s.get(p), n.get(p)
      if not (isinstance(s, dict) and isinstance(n, dict)):
        break
    else:
      if leaf not in s and leaf in n and keeps(n[leaf], now):
        del n[leaf]
  return now


def check_resume(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  now = without_added(saved, config.to_dict())
  diff = sorted(k for k in set(saved) | set(now)
                if k not in RESUMABLE and saved.get(k) != now.get(k))
  if (now.get("dp") or {}).get("epsilon") is not None and saved.get("rounds") != now.get("rounds"):
    diff.append("rounds (the DP noise is calibrated to the number of rounds)")
  if diff:
    raise ValueError(f"cannot resume {workdir}: its config differs in {diff}; resume with "
                     "the saved config.json or start a new --workdir")


LEDGER = "downlink.json"


def load_ledger(workdir: str, start: int, num_weights: int, num_clients: int):
  """The downlink ledger saved with the checkpoint of round ``start``; a fresh one at round 0.
  Without a matching saved ledger every client is counted as needing the full scores."""
  if start == 0:
    return downlink.Ledger(num_weights)
  try:
    with open(os.path.join(workdir, LEDGER)) as f:
      saved = json.load(f)
    if saved.get("round") == start:
      return downlink.Ledger.from_dict(saved)
  except (OSError, ValueError, KeyError):
    pass
  return downlink.Ledger(num_weights, [0] * start, {c: -1 for c in range(num_clients)})


def save_ledger(workdir: str, ledger: downlink.Ledger, r: int) -> None:
  """Saves the ledger beside the checkpoint of round ``r``."""
  write_json(os.path.join(workdir, LEDGER), {"round": r, **ledger.to_dict()})
