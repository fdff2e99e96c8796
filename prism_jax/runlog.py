"""What a run records: JSONL metrics, TensorBoard event files and a progress display.

The progress display is a tqdm bar when attached to a terminal or notebook, and one plain
line per round otherwise, so log files stay readable.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


class MetricsFile:
  """``metrics.jsonl``: one JSON object per round; on resume, rows after the restored round
  are dropped so the file matches the checkpoint."""

  def __init__(self, path: str, resume_round: int | None = None):
    self.path = path
    rows = []
    if resume_round is not None and os.path.exists(path):
      with open(path) as f:
        rows = [l for l in f if l.strip() and json.loads(l).get("round", 0) <= resume_round]
    with open(path, "w") as f:
      f.writelines(rows)

  def append(self, row: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def rows(self) -> list[dict]:
    with open(self.path) as f:
      return [json.loads(l) for l in f if l.strip()]


class TensorBoard:
  """TensorBoard event files (tensorboardX; no TensorFlow needed)."""

  def __init__(self, logdir: str, start_round: int = 0):
    from tensorboardX import SummaryWriter
    # purge_step drops events a killed run logged after its last checkpoint.
    self.writer = SummaryWriter(logdir, purge_step=start_round + 1 if start_round else None)

  def scalars(self, values: dict, step: int, prefix: str = "") -> None:
    for k, v in values.items():
      if isinstance(v, (int, float)) and np.isfinite(v):
        self.writer.add_scalar(prefix + k, v, step)

  def image(self, tag: str, grid: np.ndarray, step: int) -> None:
    self.writer.add_image(tag, grid, step, dataformats="HWC")

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


def _interactive() -> bool:
  if "ipykernel" in sys.modules:
    return True
  return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


class Progress:
  """Rounds done, ETA and the latest loss."""

  def __init__(self, total: int, start: int = 0):
    self.total, self.start, self.t0 = total, start, time.perf_counter()
    self.bar = None
    if _interactive():
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=start, unit="round", dynamic_ncols=True)

  def update(self, r: int, m: dict) -> None:
    done = r - self.start
    eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - r)
    info = f"loss {m['loss']:.4f}"
    if "mada_lambda" in m:   # mask methods (not dense FedAvg)
      info += (f"  lambda {m['mada_lambda']:.3f}  "
               f"H(mask) {m['mask_entropy_bits']:.3f} bit/w")
    if "dp_epsilon" in m:
      info += f"  eps {m['dp_epsilon']:.3g}"
    if self.bar is not None:
      self.bar.set_postfix_str(info, refresh=False)
      self.bar.update(1)
    else:
      print(f"round {r:4d}/{self.total} [{100 * r / self.total:3.0f}%]  {info}  "
            f"{m['seconds']:.1f}s  eta {time.strftime('%H:%M:%S', time.gmtime(eta))}",
            flush=True)

  def write(self, text: str) -> None:
    (self.bar.write if self.bar is not None else print)(text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class Silent:
  """Stands in for the logs on a process that writes no files (multi-host, not process 0)."""

  def rows(self) -> list:
    return []

  def __getattr__(self, name):
    return lambda *args, **kwargs: None
