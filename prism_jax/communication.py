"""Communication and storage accounting (paper Sec. 4, "Communication cost").

Upstream a client sends one bit per masked weight (32 for PRISM-alpha's probability layers); downstream the server broadcasts the
global probabilities as float32 (32 bits per weight). The final model is the seed plus one
bit per weight.
"""
from __future__ import annotations

FLOAT_BITS = 32
SEED_BYTES = 4


def upload_bits(num_weights: int, num_prob_weights: int = 0) -> int:
  """A client's upload before coding: a bit per weight, 32 for each of PRISM-alpha's
  ``num_prob_weights`` (the last layers, which upload float32 probabilities)."""
  return (num_weights - num_prob_weights) + FLOAT_BITS * num_prob_weights


def round_bits(num_weights: int, clients_per_round: int, num_prob_weights: int = 0,
               bits_up_per_client: int | None = None) -> dict[str, int]:
  """Bits moved in one round, per client and in total (upload: :func:`upload_bits` unless
  ``bits_up_per_client`` is given, e.g. by the server's rule)."""
  up = bits_up_per_client or upload_bits(num_weights, num_prob_weights)
  down = FLOAT_BITS * num_weights
  return {"bits_up_per_client": up, "bits_down_per_client": down,
          "bits_up": up * clients_per_round, "bits_down": down * clients_per_round}


def dense_bytes(num_weights: int) -> int:
  """Size of the same generator stored densely in float32."""
  return FLOAT_BITS // 8 * num_weights


def mask_bytes(num_weights: int) -> int:
  """Seed plus the packed mask: ``ceil(n / 8)`` bytes of bits."""
  return SEED_BYTES + (num_weights + 7) // 8
