"""The final PRISM model: a seed plus one bit per weight (paper Sec. 3, "Final model").

:func:`final_mask` samples ``M ~ Bernoulli(theta_T)`` once; :func:`save_model` writes the
generator's hyper-parameters, the seed and ``np.packbits`` of the mask (leaves in PyTree
order) to one ``.npz`` file; :func:`load_model` rebuilds the identical generator from it.
:func:`save_dense` stores the dense FedAvg baseline's float32 weights the same way (the size
PRISM's bits are compared with); :func:`load_generator` reads either.
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


def unflatten(flat: np.ndarray, like):
  """A flat array cut into a PyTree with the structure and shapes of ``like``."""
  leaves, treedef = jax.tree.flatten(like)
  sizes = [int(np.prod(x.shape)) for x in leaves]
  out = np.split(flat[:sum(sizes)], np.cumsum(sizes)[:-1])
  return jax.tree.unflatten(treedef, [o.reshape(x.shape) for o, x in zip(out, leaves)])


def unpack(bits: np.ndarray, like):
  """Inverse of :func:`pack` for a PyTree with the structure and shapes of ``like``."""
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(like))
  return unflatten(np.unpackbits(bits, count=n).astype(bool), like)


def _write(path: str, model: generator.ResNetGenerator, seed: int, kind: str, **arrays) -> int:
  hparams = {f: getattr(model, f) for f in ("image_size", "channels", "nz", "ngf",
                                            "input_fan")}
  header = {"format": FORMAT_VERSION, "seed": int(seed), "model": hparams, "kind": kind}
  with open(path, "wb") as f:
    np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
  return os.path.getsize(path)


def save_model(path: str, model: generator.ResNetGenerator, seed: int, mask_tree) -> int:
  """Writes the exported model; returns its size in bytes."""
  return _write(path, model, seed, "mask", bits=pack(mask_tree))


def save_dense(path: str, model: generator.ResNetGenerator, params) -> int:
  """Writes dense float32 weights (leaves in PyTree order); returns the size in bytes."""
  flat = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(params)])
  return _write(path, model, 0, "dense", weights=flat)


def _read(path: str):
  try:
    with np.load(path) as f:
      header = json.loads(f["header"].tobytes().decode())
      data = f["weights" if header.get("kind") == "dense" else "bits"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a PRISM model export ({e})") from e
  if header.get("format") != FORMAT_VERSION:
    raise ValueError(f"{path}: unsupported export format {header.get('format')!r}")
  # Exports written before input_fan existed used the true fan-in.
  model = generator.ResNetGenerator(**{"input_fan": "nz", **header["model"]})
  like = jax.eval_shape(lambda: generator.init_weights(model, 0))
  return header, model, data, like


def load_model(path: str):
  """Reads an exported mask model; returns ``(model, seed, binary_masks)``."""
  header, model, bits, like = _read(path)
  if header.get("kind") == "dense":
    raise ValueError(f"{path} holds dense weights, not a mask; use load_generator")
  return model, header["seed"], unpack(bits, like)


def load_generator(path: str):
  """Exported model (mask or dense) as a ready function ``z -> images``."""
  header, model, data, like = _read(path)
  if header.get("kind") == "dense":
    params = unflatten(data, like)
    return jax.jit(lambda z: model.apply({"params": params}, z))
  weights = generator.init_weights(model, header["seed"])
  binary = unpack(data, like)
  return jax.jit(lambda z: generator.apply_binary(model, weights, binary, z))
