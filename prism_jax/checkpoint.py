"""Orbax checkpoints of the server state (scores, seed, round): never the frozen weights."""
from __future__ import annotations

import os

import orbax.checkpoint as ocp


def manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def save(mgr: ocp.CheckpointManager, step: int, state) -> None:
  mgr.save(step, args=ocp.args.StandardSave(state))
  mgr.wait_until_finished()


def _restore(mgr: ocp.CheckpointManager, step: int | None, args):
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
  try:
    return mgr.restore(step, args=args)
  except Exception as e:  # orbax raises many types for unreadable / mismatched data
    raise ValueError(f"checkpoint {step} in {mgr.directory} is corrupt or incompatible "
                     f"with this run ({type(e).__name__}: {e})") from e


def restore(mgr: ocp.CheckpointManager, like, step: int | None = None):
  """Restores ``step`` (default: latest) into the structure of ``like``."""
  return _restore(mgr, step, ocp.args.StandardRestore(like))


def save_with_meta(mgr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """``state`` (arrays) and ``meta`` (JSON: host-side bookkeeping) as one checkpoint."""
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta)))
  mgr.wait_until_finished()


def restore_with_meta(mgr: ocp.CheckpointManager, like, step: int | None = None):
  """``(state, meta)`` of :func:`save_with_meta` (default: the latest step)."""
  out = _restore(mgr, step, ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                                meta=ocp.args.JsonRestore()))
  return out["state"], out["meta"]
