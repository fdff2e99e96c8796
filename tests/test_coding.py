"""Entropy-coded masks: lossless for any shapes, below 1 bit when theta is confident, never
above the packed bits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax.data import ClientData
from prism_jax import algorithm
from prism_jax import client, coding, export, server
from prism_jax import round as rnd

pytest.importorskip("constriction")


def _tree(key, shapes, sharpness):
  """Scores with |s| ~ sharpness (confident theta when large) and masks drawn from them."""
  keys = jax.random.split(key, 2 * len(shapes))
  scores = {f"l{i}": sharpness * jax.random.normal(keys[i], s) for i, s in enumerate(shapes)}
  theta = jax.tree.map(jax.nn.sigmoid, scores)
  masks = {k: jax.random.bernoulli(keys[len(shapes) + i], theta[k])
           for i, k in enumerate(sorted(theta))}
  return theta, masks


@pytest.mark.parametrize("shapes", [[(3,)], [(4, 4, 1, 8), (1, 1, 8, 2), (7,)],
                                    [(128, 4, 4, 16)], [(1,)]])
def test_decode_inverts_encode_for_every_shape(shapes):
  theta, masks = _tree(jax.random.key(len(shapes)), shapes, 3.0)
  payload = coding.encode(masks, theta)
  out = coding.decode(payload, theta)
  for k in masks:
    np.testing.assert_array_equal(out[k], np.asarray(masks[k]))
    assert out[k].shape == masks[k].shape and out[k].dtype == bool


def test_confident_theta_costs_far_less_than_one_bit_and_matches_the_ideal():
  theta, masks = _tree(jax.random.key(0), [(200_000,)], 6.0)
  payload = coding.encode(masks, theta)
  n = 200_000
  bits = coding.payload_bits(payload) / n
  probs = coding.model_probs(theta)
  ideal = coding.cross_entropy_bits(np.asarray(masks["l0"]), probs) / n
  assert bits < 0.5
  assert abs(bits - ideal) < 0.01       # the range coder is within 1% of a bit of ideal


def test_uninformative_model_falls_back_to_packed_bits():
  n = 10_001
  theta = {"w": jnp.full((n,), 0.5)}
  masks = {"w": jax.random.bernoulli(jax.random.key(1), 0.5, (n,))}
  # A model that is wrong about every bit would cost ~10 bits each: packed bits instead.
  wrong = {"w": jnp.where(masks["w"], 0.0, 1.0)}
  payload = coding.encode(masks, wrong)
  assert payload[0] == coding.RAW and len(payload) == 1 + (n + 7) // 8
  np.testing.assert_array_equal(coding.decode(payload, wrong)["w"], np.asarray(masks["w"]))
  assert coding.payload_bits(coding.encode(masks, theta)) <= 8 * (1 + (n + 7) // 8)


def test_corrupt_or_mismatched_payload_is_refused():
  theta, masks = _tree(jax.random.key(2), [(100,)], 2.0)
  with pytest.raises(ValueError, match="not an encoded mask"):
    coding.decode(b"\x07abc", theta)
  with pytest.raises(ValueError, match="multiple of 4"):
    coding.decode(bytes([coding.CODED]) + b"abc", theta)
  with pytest.raises(ValueError, match="100 bits but a model of 99"):
    coding.encode_flat(np.ones(100, bool), np.full(99, 0.5))


def test_code_uploads_of_a_jitted_round(tiny_model, tiny_objective):
  """The round's packed uploads decode to the masks the server averaged, below 1 bit once
  the scores are confident."""
  prism = algorithm.Prism(tiny_objective, client.LocalConfig(local_steps=2, batch_size=4),
                    num_clients=3, clients_per_round=2)
  step = rnd.make_round_step(prism, with_uploads=True)
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), score_std=4.0)
  rng = np.random.default_rng(0)
  data = ClientData(jnp.asarray(rng.integers(0, 255, (3, 8, 16, 16, 1)).astype(np.uint8)),
                        jnp.full((3,), 8, jnp.int32))
  new, m, (packed, ids, bcast) = step(state, data, jax.random.key(1))
  packed, ids = np.asarray(packed), np.asarray(ids)
  n = sum(x.size for x in jax.tree.leaves(state.scores))
  assert packed.shape == (2, (n + 7) // 8) and sorted(ids.tolist()) == sorted(set(ids.tolist()))
  # Averaging the unpacked uploads with the 0.01 smoothing gives the new global theta
  # (no MADA in this check: compare against server.aggregate directly).
  bits = np.unpackbits(packed, axis=1, count=n).astype(bool)
  theta_hat = np.mean(np.where(bits, 0.99, 0.01), axis=0)
  like = jax.tree.map(lambda x: np.zeros(x.shape, bool), state.scores)
  uploads = jax.tree.map(lambda *x: np.stack(x), *[export.unflatten(b, like) for b in bits])
  agg = server.aggregate(uploads, jnp.ones(2))
  np.testing.assert_allclose(np.concatenate([np.ravel(a) for a in jax.tree.leaves(agg)]),
                             theta_hat, rtol=1e-6)
  # The round's broadcast holds the per-weight counts of those uploads.
  np.testing.assert_array_equal(
      np.concatenate([np.ravel(c) for c in jax.tree.leaves(bcast.counts)]), bits.sum(axis=0))
  out = coding.code_uploads(packed, ids, coding.model_from_scores(state.scores))
  assert 0 < out["coded_bits_per_weight"] < 1
  assert out["coded_bits_per_weight"] >= out["ideal_bits_per_weight"] - 1e-3
  assert out["coded_bits_up"] == pytest.approx(2 * n * out["coded_bits_per_weight"])
