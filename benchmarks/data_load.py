"""Load time and memory of each dataset at its paper image size (32x32).

No dataset can be downloaded here, so each tfds dataset is written locally with random
content in its real tfds format (same features, JPEG/PNG encoding, splits) at ``--n``
training examples; load time is measured through the real ``prism_jax.data.load`` path and
extrapolated linearly to the full dataset size. ``mnist_offline`` is measured for real.

  python -m benchmarks.data_load --n=10000 --out=benchmarks/results/data_load.json
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time


from prism_jax import data, tfds_fixture


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=10_000)
  parser.add_argument("--out", default="benchmarks/results/data_load.json")
  parser.add_argument("--datasets", default="mnist_offline,mnist,fashion_mnist,cifar10,celeb_a")
  args = parser.parse_args()
  rows = []
  for name in args.datasets.split(","):
    info = data.info(name)
    size = info.paper_image_size
    before = _rss_mb()
    if info.source == "tfds":
      with tempfile.TemporaryDirectory() as d:
        sizes = {"train": args.n, "test": max(args.n // 5, 2)}
        if name == "celeb_a":
          sizes["validation"] = max(args.n // 8, 2)
        tfds_fixture.write(name, d, sizes, content="noise")
        t0 = time.perf_counter()
        splits = data.load(name, size, data_dir=d)
        seconds = time.perf_counter() - t0
    else:
      t0 = time.perf_counter()
      splits = data.load(name, size)
      seconds = time.perf_counter() - t0
    n_loaded = len(splits["train"].images) + len(splits["valid"].images) + len(splits["test"].images)
    full = info.train_size
    row = {"dataset": name, "image_size": size, "examples_loaded": n_loaded,
           "seconds": round(seconds, 2), "us_per_example": round(1e6 * seconds / n_loaded, 1),
           "train_uint8_MB_full": round(data.memory_bytes(name, size) / 1e6, 1),
           "train_float32_MB_full": round(4 * data.memory_bytes(name, size) / 1e6, 1),
           "seconds_full_train_extrapolated": round(seconds / n_loaded * full, 1),
           "peak_rss_MB": round(_rss_mb(), 0), "rss_growth_MB": round(_rss_mb() - before, 0)}
    rows.append(row)
    print(json.dumps(row), flush=True)
  with open(args.out, "w") as f:
    json.dump(rows, f, indent=2)
  print(f"{'dataset':>14} {'s (loaded)':>10} {'us/ex':>7} {'full train s':>12} "
        f"{'uint8 MB':>9} {'float32 MB':>10}")
  for r in rows:
    print(f"{r['dataset']:>14} {r['seconds']:>10} {r['us_per_example']:>7} "
          f"{r['seconds_full_train_extrapolated']:>12} {r['train_uint8_MB_full']:>9} "
          f"{r['train_float32_MB_full']:>10}")


if __name__ == "__main__":
  main()
