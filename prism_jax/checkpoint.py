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


def restore(mgr: ocp.CheckpointManager, like, step: int | None = None):
  """Restores ``step`` (default: latest) into the structure of ``like``."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
  try:
    return mgr.restore(step, args=ocp.args.StandardRestore(like))
  except Exception as e:  # orbax raises many types for unreadable / mismatched data
    raise ValueError(f"checkpoint {step} in {mgr.directory} is corrupt or incompatible "
                     f"with this run ({type(e).__name__}: {e})") from e
