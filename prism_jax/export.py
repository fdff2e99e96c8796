"""The final PRISM model: a seed plus one bit per weight (paper Sec. 3, "Final model").

:func:`final_mask` samples ``M ~ Bernoulli(theta_T)`` once; :func:`save_model` writes the
generator's hyper-parameters, the seed and ``np.packbits`` of the mask (leaves in PyTree
order) to one ``.npz`` file; :func:`load_model` rebuilds the identical generator from it.
"""
from __future__ import annotations

import json
import os
import zipfile

import jax
import numpy as np

from prism_jax import generator, masking

FORMAT_VERSION = 1


def final_mask(key: jax.Array, scores):
  """The deployed mask, ``M ~ Bernoulli(sigmoid(scores))``, as a bool PyTree."""
  return jax.jit(lambda k, s: masking.sample_binary(k, masking.keep_prob(s)))(key, scores)


def pack(mask_tree) -> np.ndarray:
  """All mask bits, leaves concatenated in PyTree order, packed 8 per byte."""
  flat = np.concatenate([np.asarray(m, bool).ravel() for m in jax.tree.leaves(mask_tree)])
  return np.packbits(flat)


def unpack(bits: np.ndarray, like):
  """Inverse of :func:`pack` for a PyTree with the structure and shapes of ``like``."""
  leaves, treedef = jax.tree.flatten(like)
  sizes = [int(np.prod(x.shape)) for x in leaves]
  flat = np.unpackbits(bits, count=sum(sizes)).astype(bool)
  out = np.split(flat, np.cumsum(sizes)[:-1])
  return jax.tree.unflatten(treedef, [o.reshape(x.shape) for o, x in zip(out, leaves)])


def save_model(path: str, model: generator.ResNetGenerator, seed: int, mask_tree) -> int:
  """Writes the exported model; returns its size in bytes."""
  hparams = {f: getattr(model, f) for f in ("image_size", "channels", "nz", "ngf")}
  header = {"format": FORMAT_VERSION, "seed": int(seed), "model": hparams}
  with open(path, "wb") as f:
    np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
             bits=pack(mask_tree))
  return os.path.getsize(path)


def load_model(path: str):
  """Reads an exported model; returns ``(model, seed, binary_masks)``."""
  try:
    with np.load(path) as f:
      header = json.loads(f["header"].tobytes().decode())
      bits = f["bits"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a PRISM model export ({e})") from e
  if header.get("format") != FORMAT_VERSION:
    raise ValueError(f"{path}: unsupported export format {header.get('format')!r}")
  model = generator.ResNetGenerator(**header["model"])
  like = jax.eval_shape(lambda: generator.init_weights(model, 0))
  return model, header["seed"], unpack(bits, like)


def load_generator(path: str):
  """Exported model as a ready function ``z -> images``."""
  model, seed, binary = load_model(path)
  weights = generator.init_weights(model, seed)
  return jax.jit(lambda z: generator.apply_binary(model, weights, binary, z))
