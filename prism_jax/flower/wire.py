"""The wire format of a node's reply: its upload coded for the network and decoded by the
server, next to each other. Masks are range-coded against the global theta both sides hold
(:mod:`prism_jax.coding`), PRISM-alpha's probability layers travel as float32 arrays and
PBM's bits (fair coins give or take b: incompressible) are packed. A digest of the mask
bits lets the server check its decoding."""
from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import coding, pbm
from prism_jax.flower.keys import METRICS, PROBS, UPLOAD


def arrays(tree) -> list[np.ndarray]:
  """The leaves of a PyTree as numpy arrays (a Flower ``ArrayRecord``'s contents)."""
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def tree(arrays, like):
  """The PyTree of structure ``like`` from its leaves."""
  return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(a) for a in arrays])


class UploadError(ValueError):
  """An upload the server refuses (it is not aggregated; the round goes on without it)."""


def encode_upload(dep, upload, scores) -> tuple[bytes, list[np.ndarray], str]:
  """``(payload, float32 probability layers, mask digest)`` of a node's upload, coded
  against the global ``scores`` it trained from."""
  if dep.prism.rule.uploads == "bits":   # PBM: one bit per rotated coordinate, packed
    return np.packbits(np.asarray(upload)).tobytes(), [], ""
  leaves = jax.tree.leaves(upload)
  masks = [m for m, b in zip(leaves, dep.bit_leaves) if b]
  probs = [np.asarray(p, np.float32) for p, b in zip(leaves, dep.bit_leaves) if not b]
  theta = [jax.nn.sigmoid(s) for s, b in zip(jax.tree.leaves(scores), dep.bit_leaves) if b]
  return coding.encode(masks, theta, dep.coding_floor), probs, mask_digest(masks)


def mask_digest(leaves) -> str:
  """A short hash of a client's mask bits: the server checks its decoding against it."""
  bits = np.concatenate([np.asarray(m, bool).ravel() for m in leaves])
  return hashlib.sha256(np.packbits(bits).tobytes()).hexdigest()[:16]


def decode_upload(dep, reply, theta_bits, version: int) -> tuple[Any, dict, str]:
  """``(upload, metrics, scores digest)`` of a client's reply; raises :class:`UploadError`
  naming what is wrong (a payload that does not decode, the wrong length, another round)."""
  try:
    up, metrics = reply.content[UPLOAD], dict(reply.content[METRICS])
    payload, claimed = up["mask"], int(up["round"])
  except (KeyError, TypeError, ValueError) as e:
    raise UploadError(f"malformed reply ({type(e).__name__}: {e})") from e
  if claimed != version:
    raise UploadError(f"upload claims round {claimed}, this is round {version}")
  if dep.prism.rule.uploads == "bits":
    d = pbm.padded_size(dep.num_weights)
    if len(payload) != -(-d // 8):
      raise UploadError(f"PBM upload of {len(payload)} bytes, expected {-(-d // 8)}")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), count=d).astype(bool)
    return jnp.asarray(bits), metrics, up["digest"]
  try:
    masks = coding.decode(payload, theta_bits, dep.coding_floor)
  except Exception as e:   # constriction / numpy raise several types on corrupt input
    raise UploadError(f"mask payload does not decode ({type(e).__name__}: {e})") from e
  if mask_digest(masks) != up.get("mask_digest"):
    raise UploadError("decoded mask does not match its digest (corrupt or wrong length)")
  probs = reply.content[PROBS].to_numpy_ndarrays() if PROBS in reply.content else []
  like = [x for x, b in zip(jax.tree.leaves(dep.like), dep.bit_leaves) if not b]
  if [p.shape for p in probs] != [x.shape for x in like]:
    raise UploadError(f"probability layers of shapes {[p.shape for p in probs]}, expected "
                      f"{[x.shape for x in like]}")
  masks, probs = iter(masks), iter(probs)
  leaves = [next(masks) if b else jnp.asarray(next(probs)) for b in dep.bit_leaves]
  return jax.tree.unflatten(jax.tree.structure(dep.like), leaves), metrics, up["digest"]
