"""The downlink: coded broadcasts of mask counts that every client turns into the server's
exact scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax.data import ClientData
from prism_jax import algorithm, rules
from prism_jax import client, downlink, server
from prism_jax import round as rnd


def _bcast(counts, k, lam=0.25, probs=None):
  tree = {"a": jnp.asarray(counts, jnp.int32)}
  if probs is not None:
    tree["b"] = jnp.asarray(probs, jnp.float32)
  return server.Broadcast(tree, k, jnp.float32(lam))


def test_message_round_trip_coded_and_raw():
  rng = np.random.default_rng(0)
  theta = rng.choice([0.02, 0.98], size=4000)
  prev = {"a": jnp.asarray(np.log(theta / (1 - theta)), jnp.float32),
          "b": jnp.zeros(3, jnp.float32)}
  counts = rng.binomial(4, theta)                      # drawn from the shared model
  bc = _bcast(counts, 4, probs=[0.1, 0.5, 0.9])
  leaves = [True, False]
  msg = downlink.encode(bc, 7, prev, leaves)
  back = downlink.decode(msg, 7, prev, leaves)
  np.testing.assert_array_equal(back.counts["a"], counts)
  np.testing.assert_array_equal(back.counts["b"], np.float32([0.1, 0.5, 0.9]))
  assert int(back.participants) == 4 and back.lam == np.float32(0.25)
  # Confident model: far below the 3 bits per weight of packed counts.
  assert 8 * len(msg) < 0.5 * 4000
  # Counts the model calls unlikely: the raw bit planes (3 per count at K = 4) cap the cost.
  bad = _bcast(np.where(theta > 0.5, 0, 4), 4, probs=[0.1, 0.5, 0.9])
  msg = downlink.encode(bad, 7, prev, leaves)
  np.testing.assert_array_equal(downlink.decode(msg, 7, prev, leaves).counts["a"],
                                bad.counts["a"])
  assert len(msg) <= 3 * 4000 // 8 + 3 * 4 + 32


def test_wrong_round_or_corrupt_message_is_refused_naming_the_round():
  prev = {"a": jnp.zeros(64)}
  msg = downlink.encode(_bcast(np.ones(64), 2), 5, prev, [True])
  with pytest.raises(downlink.DownlinkError, match="round 5 received.*needs round 4"):
    downlink.decode(msg, 4, prev, [True])
  with pytest.raises(downlink.DownlinkError, match="round 5 does not decode"):
    downlink.decode(msg[:-3], 5, prev, [True])
  with pytest.raises(downlink.DownlinkError, match="not a broadcast"):
    downlink.decode(b"xx" + msg[2:], 5, prev, [True])


def test_ledger_sends_missed_broadcasts_or_the_full_scores():
  led = downlink.Ledger(num_weights=100)            # full scores: 3,232 bits
  assert led.catch_up(0) == (0, "broadcasts")       # round 0 comes from the seed
  for bits in (1000, 1500, 1000):
    led.publish(bits)
  assert led.catch_up(0) == (3232, "full")          # missed 3,500 bits of broadcasts
  led.publish(200)
  assert led.catch_up(0) == (200, "broadcasts")
  assert led.catch_up(0) == (0, "broadcasts")
  led2 = downlink.Ledger.from_dict(led.to_dict())
  assert led2 == led
  unknown = downlink.Ledger(100, [0, 0], {3: -1})   # resumed without a saved ledger
  assert unknown.catch_up(3) == (3232, "full")


@pytest.mark.parametrize("method,alpha,mada", [("prism", 0.0, True), ("prism", 0.5, False),
                                               ("fedpm", 0.0, False)])
def test_clients_rebuild_the_server_scores_bitwise_over_five_rounds(
    tiny_model, tiny_objective, method, alpha, mada):
  """A client that starts from the seed's scores and applies each decoded broadcast holds
  exactly the server's scores after every round; one that missed rounds catches up."""
  rule = (rules.PrismRule(server=server.ServerConfig(mada=mada), alpha=alpha)
          if method == "prism" else rules.FedPMRule())
  prism = algorithm.Prism(tiny_objective, client.LocalConfig(local_steps=2, batch_size=4),
                          num_clients=3, clients_per_round=2, rule=rule)
  step = rnd.make_round_step(prism, with_uploads=True)
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=prism)
  rng = np.random.default_rng(0)
  data = ClientData(jnp.asarray(rng.integers(0, 255, (3, 8, 16, 16, 1)).astype(np.uint8)),
                        jnp.full((3,), 8, jnp.int32))
  probs = prism.send_probs(state.scores)
  leaves = [not p for p in jax.tree.leaves(probs)] if probs else [True] * 3
  leaves = leaves if probs else [True] * len(jax.tree.leaves(state.scores))
  apply = jax.jit(prism.rule.apply)
  mine, aux = state.scores, state.aux
  messages = []
  for r in range(5):
    prev = jax.device_get(state.scores)
    state, _, (_, _, bcast) = step(state, data, jax.random.key(r))
    messages.append((downlink.encode(bcast, r + 1, prev, leaves), prev))
    got = downlink.decode(messages[-1][0], r + 1, jax.device_get(mine), leaves)
    mine, aux = apply(mine, aux, got, jnp.int32(r))
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(state.scores)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A late client: the round-0 scores from the seed, then all five messages in order.
  late = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=prism)
  s, a = late.scores, late.aux
  for r, (msg, _) in enumerate(messages):
    s, a = apply(s, a, downlink.decode(msg, r + 1, jax.device_get(s), leaves), jnp.int32(r))
  for x, y in zip(jax.tree.leaves(s), jax.tree.leaves(state.scores)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
