"""The downlink: each round's :class:`~prism_jax.server.Broadcast` as a small coded message,
and what a client that missed rounds is sent.

The server does not broadcast float32 scores. After round ``r`` it sends the per-weight
count of participants whose bit was 1, the number of participants ``K``, MADA's ``lambda``
and ``r``; a client holding the scores of round ``r - 1`` rebuilds those of round ``r`` with
:meth:`prism_jax.rules.Rule.apply`, the function the server itself uses. The counts
are range-coded (``constriction``) against ``Binomial(K, theta_prev)`` per weight: each
participant drew its bit from a local theta that started at the previous global
``theta_prev``, which both sides hold, so a count costs about its entropy under that model
(far below ``log2(K + 1)`` bits once theta saturates). When coding does not pay the counts
are sent as packed bit planes. PRISM-alpha's probability layers travel as their new
scores, float32.

Message: ``b"PB" | version | flag | round uint32 | K uint32 | lambda float32 | counts |
float32 probabilities``. With the Poisson binomial mechanism (:mod:`prism_jax.pbm`) the
counts are the per-coordinate sums of the rotated bits, coded against ``Binomial(K, 1/2)``,
followed by the round's rotation key (2 x uint32) instead of probabilities. A message that does not decode, or whose round is not the one the
client expects next, raises :class:`DownlinkError` naming the rounds; the client then asks
for the full float32 scores instead of training on a wrong state.

A client that missed rounds (partial participation, a new node) is brought up to date by
:class:`Ledger`: the broadcasts it missed, applied in order, or the full float32 scores,
whichever is smaller. Round 0's scores come from the shared seed and cost nothing.
"""
from __future__ import annotations

import dataclasses
import struct
import time

import jax
import numpy as np

from prism_jax import coding, pbm, server

MAGIC, VERSION = b"PB", 1
_HEADER = struct.Struct("<2sBBIIf")   # magic, version, flag, round, participants, lambda
RAW, CODED, PBM_RAW, PBM_CODED = 0, 1, 2, 3
FLOAT_BITS = 32


class DownlinkError(ValueError):
  """A broadcast that cannot be applied: corrupt, or not the next round for this client."""


def _flat_counts(counts, bit_leaves) -> tuple[np.ndarray, list[np.ndarray]]:
  leaves = [np.asarray(x) for x in jax.tree.leaves(counts)]
  bits = [x.ravel() for x, b in zip(leaves, bit_leaves) if b]
  return (np.concatenate(bits).astype(np.int32) if bits else np.zeros(0, np.int32),
          [x for x, b in zip(leaves, bit_leaves) if not b])


def _planes(k: int) -> int:
  """Bits per count in the raw fallback: counts lie in 0..k."""
  return max(1, int(k).bit_length())


def _pack(counts: np.ndarray, k: int) -> bytes:
  width = _planes(k)
  planes = (counts[:, None] >> np.arange(width)) & 1
  return np.packbits(planes.astype(np.uint8).ravel()).tobytes()


def _unpack(body: bytes, k: int, n: int) -> np.ndarray:
  width = _planes(k)
  bits = np.unpackbits(np.frombuffer(body, np.uint8), count=n * width).reshape(n, width)
  return (bits.astype(np.int32) << np.arange(width)).sum(axis=1).astype(np.int32)


def encode(bcast: server.Broadcast, round_: int, prev_scores, bit_leaves,
           floor: float = 1e-3) -> bytes:
  """The message for round ``round_`` (1-based: the round that produced ``bcast``), coded
  against the global scores ``prev_scores`` that round started from. ``bit_leaves``: per
  leaf, whether it holds mask counts (else PRISM-alpha's float32 probabilities)."""
  bcast = jax.device_get(bcast)
  k = int(bcast.participants)
  if bcast.rotation is not None:   # PBM: sums of rotated bits, Binomial(K, 1/2) give or take b
    counts, probs = np.asarray(bcast.counts, np.int32), []
    p = np.full(counts.shape, 0.5, np.float64)
    flags, extra = (PBM_RAW, PBM_CODED), np.asarray(bcast.rotation, np.uint32).tobytes()
  else:
    counts, probs = _flat_counts(bcast.counts, bit_leaves)
    p = coding.model_from_scores(prev_scores, bit_leaves, floor) if counts.size else None
    flags, extra = (RAW, CODED), b"".join(np.asarray(x, np.float32).tobytes() for x in probs)
  raw = _pack(counts, k)
  flag, body = flags[0], raw
  if counts.size:
    import constriction
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(counts, constriction.stream.model.Binomial(k), p)
    coded = encoder.get_compressed().tobytes()
    if len(coded) < len(raw):
      flag, body = flags[1], coded
  header = _HEADER.pack(MAGIC, VERSION, flag, round_, k, float(bcast.lam))
  return header + struct.pack("<I", len(body)) + body + extra


def peek_round(payload: bytes) -> int:
  """The round a message claims to come from (header only)."""
  if len(payload) < _HEADER.size or payload[:2] != MAGIC:
    raise DownlinkError("not a broadcast message (bad header)")
  return _HEADER.unpack_from(payload)[3]


def decode(payload: bytes, expected_round: int, prev_scores, bit_leaves,
           floor: float = 1e-3) -> server.Broadcast:
  """The :class:`~prism_jax.server.Broadcast` of round ``expected_round`` from
  :func:`encode`'s message, given the scores the client holds (those of round
  ``expected_round - 1``). Raises :class:`DownlinkError` if it is corrupt or from another
  round."""
  got = peek_round(payload)
  if got != expected_round:
    raise DownlinkError(f"broadcast of round {got} received, but this client holds round "
                        f"{expected_round - 1} and needs round {expected_round}; fetch the "
                        "full scores")
  try:
    magic, version, flag, _, k, lam = _HEADER.unpack_from(payload)
    if version != VERSION or flag not in (RAW, CODED, PBM_RAW, PBM_CODED) or k < 1:
      raise ValueError(f"version {version}, flag {flag}, participants {k}")
    (size,) = struct.unpack_from("<I", payload, _HEADER.size)
    start = _HEADER.size + 4
    body, extra = payload[start:start + size], payload[start + size:]
    leaves = jax.tree.leaves(prev_scores)
    is_pbm = flag in (PBM_RAW, PBM_CODED)
    n_bits = (pbm.padded_size(sum(x.size for x in leaves)) if is_pbm else
              sum(x.size for x, b in zip(leaves, bit_leaves) if b))
    if len(body) != size:
      raise ValueError("truncated counts")
    if flag in (RAW, PBM_RAW):
      counts = _unpack(body, k, n_bits)
    else:
      import constriction
      if size % 4:
        raise ValueError("coded counts not a multiple of 4 bytes")
      p = (np.full(n_bits, 0.5) if is_pbm else
           coding.model_from_scores(prev_scores, bit_leaves, floor))
      decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(body, np.uint32).copy())
      counts = decoder.decode(constriction.stream.model.Binomial(k), p).astype(np.int32)
    if counts.size != n_bits or counts.min(initial=0) < 0 or counts.max(initial=0) > k:
      raise ValueError("counts out of range")
    if is_pbm:
      if len(extra) != 8:
        raise ValueError(f"{len(extra)} bytes of rotation key, expected 8")
      return server.Broadcast(counts, int(k), np.float32(lam),
                              np.frombuffer(extra, np.uint32).copy())
    n_probs = sum(x.size for x, b in zip(leaves, bit_leaves) if not b)
    if len(extra) != 4 * n_probs:
      raise ValueError(f"{len(extra)} bytes of probabilities, expected {4 * n_probs}")
    probs = np.frombuffer(extra, np.float32)
  except (ValueError, struct.error, RuntimeError, OverflowError) as e:
    raise DownlinkError(f"broadcast of round {expected_round} does not decode ({e}); fetch "
                        "the full scores") from e
  out, ci, pi = [], 0, 0
  for x, b in zip(leaves, bit_leaves):
    if b:
      out.append(counts[ci:ci + x.size].reshape(x.shape))
      ci += x.size
    else:
      out.append(probs[pi:pi + x.size].reshape(x.shape).copy())
      pi += x.size
  counts_tree = jax.tree.unflatten(jax.tree.structure(prev_scores), out)
  return server.Broadcast(counts_tree, int(k), np.float32(lam))


def full_bits(num_weights: int) -> int:
  """The fallback: the global scores as float32 plus the round number."""
  return FLOAT_BITS * num_weights + 32


@dataclasses.dataclass
class Ledger:
  """The server's downlink bookkeeping: every broadcast's size and, per client, the round
  whose scores it holds. :meth:`catch_up` says what a participant must be sent at the start
  of a round (the broadcasts it missed, in order, or the full scores, whichever is smaller)
  and counts it; :meth:`publish` records a round's broadcast. Everyone starts at round 0,
  whose scores come from the shared seed."""
  num_weights: int
  sizes: list = dataclasses.field(default_factory=list)     # bits of rounds 1, 2, ...
  holds: dict = dataclasses.field(default_factory=dict)     # client id -> round held

  def catch_up(self, client: int) -> tuple[int, str]:
    """``(bits, how)`` to bring ``client`` to the latest round; ``how`` is
    ``"broadcasts"`` (including none) or ``"full"``. Marks the client as up to date."""
    held = self.holds.get(client, 0)
    missed = sum(self.sizes[held:]) if held >= 0 else None
    self.holds[client] = len(self.sizes)
    full = full_bits(self.num_weights)
    if missed is None or missed > full:
      return full, "full"
    return missed, "broadcasts"

  def publish(self, bits: int) -> None:
    self.sizes.append(int(bits))

  def to_dict(self) -> dict:
    return {"num_weights": self.num_weights, "sizes": self.sizes,
            "holds": {str(k): v for k, v in self.holds.items()}}

  @classmethod
  def from_dict(cls, d: dict) -> "Ledger":
    return cls(d["num_weights"], list(d["sizes"]), {int(k): v for k, v in d["holds"].items()})


def code_round(ledger: Ledger, bcast: server.Broadcast, round_: int, prev_scores, client_ids,
               bit_leaves, floor: float = 1e-3) -> dict:
  """The downlink of one simulated round, on the host: what this round's participants
  (``client_ids``, -1: empty slot) were sent to hold the scores it started from, then the
  round's broadcast coded, decoded as a client would and checked lossless, and published.
  Returns the round's downlink metrics."""
  t0 = time.perf_counter()
  ids = [int(c) for c in np.asarray(client_ids) if c >= 0]
  sent = [ledger.catch_up(c) for c in ids]
  payload = encode(bcast, round_, prev_scores, bit_leaves, floor)
  back = decode(payload, round_, prev_scores, bit_leaves, floor)
  for a, b in zip(jax.tree.leaves(back.counts), jax.tree.leaves(jax.device_get(bcast.counts))):
    if not np.array_equal(a, np.asarray(b)):
      raise AssertionError(f"round {round_}: the coded broadcast is not lossless")
  ledger.publish(8 * len(payload))
  down = sum(bits for bits, _ in sent)
  return {"coded_bits_down": down,
          "coded_bits_down_per_weight": down / max(len(ids), 1) / ledger.num_weights,
          "broadcast_bits_per_weight": 8 * len(payload) / ledger.num_weights,
          "downlink_full_fetches": sum(how == "full" for _, how in sent),
          "downlink_seconds": time.perf_counter() - t0}
