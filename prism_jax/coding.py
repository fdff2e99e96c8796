"""Entropy-coded mask uploads: fewer than 1 bit per weight once the masks are confident.

A client's mask is drawn from its local theta_k, which starts every round at the global
theta the server broadcast. Both sides know that global theta, so it is a shared probability
model: a range coder (``constriction``'s queue coder with a Bernoulli model per weight)
spends ``-log2 p(m)`` bits per weight, about the binary entropy ``H(theta)`` when the client
moved little, and far below 1 bit as theta saturates towards 0 or 1 during training.

* :func:`model_probs`: the shared model, the global theta clipped to ``[floor, 1 - floor]``
  so that a bit the client flipped costs at most ``log2(1 / floor)`` bits;
* :func:`encode` / :func:`decode`: lossless, for any PyTree of bool leaves; a payload that
  would be larger than the packed bits falls back to them (1 bit per weight + 1 byte), so
  coding never costs more than the 1-bit baseline.

Coding runs on the host (it is serial) outside the jitted round.
"""
from __future__ import annotations

import jax
import numpy as np

from prism_jax import export

RAW, CODED = 0, 1


def model_probs(theta, floor: float = 1e-3) -> np.ndarray:
  """The shared model: all leaves' keep-probabilities, flattened in PyTree order, float64."""
  flat = np.concatenate([np.asarray(t, np.float64).ravel() for t in jax.tree.leaves(theta)])
  return np.clip(flat, floor, 1.0 - floor)


def model_from_scores(scores, leaf_mask=None, floor: float = 1e-3) -> np.ndarray:
  """The shared model from the broadcast global scores (host copy, ``sigmoid`` in float64);
  ``leaf_mask`` (a list of bools per leaf) keeps only the layers that upload bits."""
  leaves = jax.tree.leaves(jax.device_get(scores))
  if leaf_mask is not None:
    leaves = [s for s, keep in zip(leaves, leaf_mask) if keep]
  return model_probs([1.0 / (1.0 + np.exp(-np.asarray(s, np.float64))) for s in leaves], floor)


def _bernoulli():
  import constriction
  return constriction.stream.model.Bernoulli(perfect=False)


def encode_flat(bits: np.ndarray, probs: np.ndarray) -> bytes:
  """Codes a flat bool array against per-bit keep-probabilities; returns the payload."""
  import constriction
  bits = np.asarray(bits, bool).ravel()
  if bits.shape != probs.shape:
    raise ValueError(f"{bits.size} bits but a model of {probs.size} probabilities")
  encoder = constriction.stream.queue.RangeEncoder()
  encoder.encode(bits.astype(np.int32), _bernoulli(), probs)
  coded = encoder.get_compressed().tobytes()
  raw = np.packbits(bits).tobytes()
  return bytes([CODED]) + coded if len(coded) < len(raw) else bytes([RAW]) + raw


def decode_flat(payload: bytes, probs: np.ndarray) -> np.ndarray:
  """Inverse of :func:`encode_flat` given the same model."""
  import constriction
  if not payload or payload[0] not in (RAW, CODED):
    raise ValueError("not an encoded mask payload")
  body = payload[1:]
  if payload[0] == RAW:
    return np.unpackbits(np.frombuffer(body, np.uint8), count=probs.size).astype(bool)
  if len(body) % 4:
    raise ValueError("corrupt coded mask payload (length not a multiple of 4 bytes)")
  decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(body, np.uint32).copy())
  return decoder.decode(_bernoulli(), probs).astype(bool)


def encode(mask_tree, theta, floor: float = 1e-3) -> bytes:
  """Codes a bool mask PyTree against the keep-probabilities ``theta`` (same structure)."""
  bits = np.concatenate([np.asarray(m, bool).ravel() for m in jax.tree.leaves(mask_tree)])
  return encode_flat(bits, model_probs(theta, floor))


def decode(payload: bytes, theta, floor: float = 1e-3):
  """The mask PyTree (structure and shapes of ``theta``) from :func:`encode`'s payload."""
  return export.unflatten(decode_flat(payload, model_probs(theta, floor)), theta)


def payload_bits(payload: bytes) -> int:
  return 8 * len(payload)


def cross_entropy_bits(bits: np.ndarray, probs: np.ndarray) -> float:
  """``-sum log2 p(bits)``: what an ideal coder with this model would spend."""
  bits = np.asarray(bits, bool).ravel()
  return float(-np.sum(np.log2(np.where(bits, probs, 1.0 - probs))))


def code_uploads(packed: np.ndarray, client_ids: np.ndarray, probs: np.ndarray) -> dict:
  """Codes one round's uploads (``packed [slots, bytes]`` from the jitted round, slots with
  id -1 are empty) against the shared model ``probs``, decodes them as the server would and
  checks they are lossless. Returns the round's coding metrics: coded bits per weight (mean
  over clients), the ideal (cross-entropy) bits per weight, the model's entropy, and the
  seconds spent coding + decoding."""
  import time
  t0 = time.perf_counter()
  n = probs.size
  coded, ideal = [], []
  for row, cid in zip(np.asarray(packed), np.asarray(client_ids)):
    if cid < 0:
      continue
    bits = np.unpackbits(row, count=n).astype(bool)
    payload = encode_flat(bits, probs)
    if not np.array_equal(decode_flat(payload, probs), bits):
      raise AssertionError(f"entropy coding of client {cid}'s mask is not lossless")
    coded.append(payload_bits(payload))
    ideal.append(cross_entropy_bits(bits, probs))
  p = np.clip(probs, 1e-12, 1 - 1e-12)
  entropy = float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))
  return {"coded_bits_per_weight": float(np.mean(coded)) / n,
          "ideal_bits_per_weight": float(np.mean(ideal)) / n,
          "model_entropy_bits": entropy,
          "coded_bits_up": int(np.sum(coded)),
          "coding_seconds": time.perf_counter() - t0}
