"""Whether two run directories computed the same thing, bit for bit: every metric of every
round (timings aside), the exported model and the final sample grid's pixels.

  python -m benchmarks.same_run runs/before runs/after

The check behind a refactor that must not change results: run the same config on the code
before and after (same machine: other CPUs round differently) and compare. Exits 1 and
names the first differences when they differ.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

TIMING = ("seconds", "client_seconds", "coding_seconds", "downlink_seconds")


def _rows(run: str) -> list[dict]:
  with open(os.path.join(run, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(TIMING)}
            for line in f if line.strip()]


def _arrays(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def differences(a: str, b: str) -> list[str]:
  """What differs between runs ``a`` and ``b`` (empty: the same)."""
  out = []
  ra, rb = _rows(a), _rows(b)
  if len(ra) != len(rb):
    out.append(f"metrics.jsonl: {len(ra)} rows against {len(rb)}")
  for x, y in zip(ra, rb):
    for k in sorted(set(x) | set(y)):
      if x.get(k) != y.get(k):
        out.append(f"round {x.get('round')}: {k} {x.get(k)!r} != {y.get(k)!r}")
  ma, mb = _arrays(os.path.join(a, "model.npz")), _arrays(os.path.join(b, "model.npz"))
  for k in sorted(set(ma) | set(mb)):
    if k not in ma or k not in mb or not np.array_equal(ma[k], mb[k]):
      out.append(f"model.npz: {k} differs")
  from PIL import Image
  pa, pb = (np.asarray(Image.open(os.path.join(r, "samples.png"))) for r in (a, b))
  if not np.array_equal(pa, pb):
    out.append("samples.png: pixels differ")
  return out


def main(argv: list[str]) -> int:
  a, b = argv
  diff = differences(a, b)
  rows = len(_rows(a))
  if diff:
    print(f"{a} and {b} differ:\n  " + "\n  ".join(diff[:20]))
    return 1
  print(f"{a} and {b}: the same {rows} metric rows (timings aside), model.npz and "
        "samples.png, bit for bit")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
