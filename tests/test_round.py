import dataclasses
import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax.data import ClientData
from prism_jax import algorithm, rules, sharding
from prism_jax import client, communication, features, generator, losses, server
from prism_jax import round as rnd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(num_clients=4, n=12, size=16):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (num_clients, n, size, size, 1)).astype(np.uint8)
  counts = np.linspace(n // 2, n, num_clients).astype(np.int32)   # unequal clients
  return ClientData(jnp.asarray(images), jnp.asarray(counts))


def _prism(objective, **kw):
  kw.setdefault("num_clients", 4)
  return algorithm.Prism(objective, client.LocalConfig(local_steps=2, batch_size=4), **kw)


def test_round_compiles_once_across_rounds_and_subsets(tiny_model, tiny_objective):
  step = rnd.make_round_step(_prism(tiny_objective, clients_per_round=2))
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  data = _data()
  for r in range(3):
    state, metrics = step(state, data, jax.random.key(r))
  assert step.jitted._cache_size() == 1
  assert int(state.round) == 3
  assert set(metrics) >= {"loss", "mada_lambda", "density", "mask_entropy_bits"}
  chex.assert_tree_all_finite(metrics)


def test_round_keeps_seed_and_score_structure(tiny_model, tiny_objective):
  step = rnd.make_round_step(_prism(tiny_objective))
  state = algorithm.init_state(tiny_model, 5, jax.random.key(0))
  new, _ = step(state, _data(), jax.random.key(1))
  assert int(new.seed) == 5
  chex.assert_trees_all_equal_shapes(new.scores, state.scores)
  # The state is seed + scores + round (no loss state here): never the frozen weights.
  assert len(jax.tree.leaves(new)) == len(jax.tree.leaves(new.scores)) + 2
  assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.scores),
                                                      jax.tree.leaves(state.scores)))


def test_cpu_rounds_compile_at_llvm_level_1_unless_xla_flags_set_one(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert sharding.compiler_options() == {"xla_backend_optimization_level": 1}
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3")
  assert sharding.compiler_options() == {}


def test_select_clients_distinct_and_padded():
  idx, w = rnd.select_clients(jax.random.key(3), 10, 3, 4)
  assert len(set(np.asarray(idx[:3]).tolist())) == 3
  np.testing.assert_array_equal(w, [1, 1, 1, 0])
  idx, w = rnd.select_clients(jax.random.key(3), 4, 4, 4)
  np.testing.assert_array_equal(idx, np.arange(4))


def test_round_matches_manual_composition(tiny_model, tiny_objective):
  """The jitted round equals client_update per client + the rule's server step."""
  prism = _prism(tiny_objective)
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  data, key = _data(), jax.random.key(7)
  new, _ = rnd.make_round_step(prism)(state, data, key)
  _, k_clients, k_server = jax.random.split(key, 3)
  w = generator.init_weights(tiny_model, 0)
  update = jax.jit(functools.partial(client.client_update, objective=tiny_objective,
                                     cfg=prism.local))
  uploads = [update(state.scores, w, data.images[k], data.counts[k], ck)[0]
             for k, ck in enumerate(jax.random.fold_in(k_clients, i) for i in range(4))]
  masks = jax.tree.map(lambda *m: jnp.stack(m), *uploads)
  expected = rnd.server_step(prism, k_server, state, masks, jnp.ones(4))[0].scores
  _assert_scores_match(new.scores, expected, max_flips=0.02)


def _assert_scores_match(a, b, max_flips=1e-3):
  """Equal up to rare mask bits flipped by float reduction order (then far apart)."""
  flat_a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
  flat_b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
  close = np.isclose(flat_a, flat_b, atol=1e-4, rtol=1e-4)
  assert np.mean(~close) <= max_flips, np.mean(~close)


def test_wrong_number_of_clients(tiny_model, tiny_objective):
  step = rnd.make_round_step(_prism(tiny_objective))
  with pytest.raises(ValueError, match="holds 3 clients"):
    step(algorithm.init_state(tiny_model, 0, jax.random.key(0)), _data(3), jax.random.key(0))


def test_bad_participation(tiny_objective):
  with pytest.raises(ValueError, match="clients_per_round"):
    _prism(tiny_objective, clients_per_round=5)


SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, sys
sys.path.insert(0, {root!r})
from prism_jax import algorithm, client, data, features, generator, losses, rules, server
from prism_jax import round as rnd, sharding
assert jax.device_count() == {devices}, jax.devices()
model = generator.ResNetGenerator(16, 1, 8, 4)
obj = client.Objective(model, features.pixels, losses.gaussian_mmd)
rng = np.random.default_rng(0)
clients = data.ClientData(
    jnp.asarray(rng.integers(0, 255, (4, 12, 16, 16, 1)).astype(np.uint8)),
    jnp.asarray(np.array([6, 8, 10, 12], np.int32)))
mesh = sharding.client_mesh()
clients = sharding.shard_client_data(clients, mesh)
out = {{}}
for per_round in (4, 3):   # 3 does not divide 2 or 4 devices: padded slots
  # SGD: Adam's sign-like steps would turn float reduction-order noise in near-zero
  # gradients into different scores, hiding what this checks (client slots, keys, data).
  local = client.LocalConfig(local_steps=2, batch_size=4, optimizer_name="sgd")
  prism = algorithm.Prism(obj, local, num_clients=4, clients_per_round=per_round,
                          rule=rules.PrismRule(server=server.ServerConfig(mada=False)))
  step = rnd.make_round_step(prism, mesh)
  state = algorithm.init_state(model, 0, jax.random.key(0))
  state, m = step(state, clients, jax.random.key(1))
  for i, x in enumerate(jax.tree.leaves(state.scores)):
    out[f"p{{per_round}}_{{i:02d}}"] = np.asarray(x)
  out[f"p{{per_round}}_loss"] = np.asarray(m["loss"])
np.savez({out!r}, **out)
"""


@pytest.fixture(scope="module")
def rounds_on_devices(tmp_path_factory):
  """The same rounds on 1, 2 and 4 forced host devices, one process each, run concurrently
  (XLA compiles on one thread)."""
  tmp = tmp_path_factory.mktemp("devices")
  procs = {}
  for devices in (1, 2, 4):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(),
               JAX_PLATFORMS="cpu")
    code = SCRIPT.format(root=ROOT, devices=devices, out=str(tmp / f"{devices}.npz"))
    procs[devices] = subprocess.Popen([sys.executable, "-c", code], env=env)
  out = {}
  for devices, proc in procs.items():
    assert proc.wait(timeout=900) == 0, f"{devices}-device run failed"
    with np.load(tmp / f"{devices}.npz") as f:
      out[devices] = {k: f[k] for k in f.files}
  return out


@pytest.mark.parametrize("devices", [2, 4])
def test_sharded_round_equals_single_device(devices, rounds_on_devices):
  """Same scores and losses on 1, 2 and 4 (forced host) devices, with and without padding."""
  single_device_round, sharded = rounds_on_devices[1], rounds_on_devices[devices]
  for p in ("p4", "p3"):
    leaves = lambda r: [r[k] for k in sorted(r) if k.startswith(p + "_0") or
                        k.startswith(p + "_1")]
    _assert_scores_match(leaves(single_device_round), leaves(sharded))
    np.testing.assert_allclose(sharded[p + "_loss"], single_device_round[p + "_loss"],
                               rtol=1e-3)   # reduction order differs with clients per device


def test_prism_alpha_sends_bits_first_and_floats_last(tiny_model, tiny_objective, key):
  w = generator.init_weights(tiny_model, 0)
  order = generator.layer_order(w)
  assert order[0] == ("input", "kernel") and order[-1] == ("output", "kernel")
  assert order.index(("block0", "conv1", "kernel")) < order.index(("block1", "conv1", "kernel"))
  probs = generator.prob_layers(w, 0.3)         # int(0.3 * 8 layers) = last 2
  flags = [_get(probs, p) for p in order]
  assert flags == [False] * (len(order) - 2) + [True] * 2
  state = client.client_init(generator.init_scores(key, w), client.LocalConfig())
  upload = client.client_final(state, key, client.LocalConfig(), probs)
  for p in order:
    leaf = _get(upload, p[:-1])["kernel"]
    assert leaf.dtype == (jnp.float32 if _get(probs, p) else jnp.bool_), p
  # The server averages the probabilities of those layers and the bits of the others.
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), upload, upload)
  theta = server.aggregate(stacked, jnp.ones(2))
  np.testing.assert_allclose(theta["output"]["kernel"],
                             jnp.clip(jax.nn.sigmoid(state.scores["output"]["kernel"]),
                                      0.01, 0.99), rtol=1e-6)
  assert set(np.unique(np.asarray(theta["input"]["kernel"]))) <= {np.float32(0.01),
                                                                 np.float32(0.99)}
  n = sum(x.size for x in jax.tree.leaves(w))
  n_prob = sum(_get(w, p).size for p in order[-2:])
  assert communication.round_bits(n, 1, n_prob)["bits_up_per_client"] == n - n_prob + 32 * n_prob


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_prism_alpha_round_runs(tiny_model, tiny_objective):
  prism = _prism(tiny_objective, rule=rules.PrismRule(alpha=0.5))
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  new, metrics = rnd.make_round_step(prism)(state, _data(), jax.random.key(1))
  chex.assert_tree_all_finite((new.scores, metrics))
  with pytest.raises(ValueError, match="alpha"):
    rules.PrismRule(alpha=1.5)


def test_gfmn_round_keeps_per_client_moving_averages(tiny_model):
  """Stats loss: each client's moving averages persist in the state; only the round's
  participants change theirs."""
  obj = client.Objective(tiny_model, features.pixels, losses.get_loss("gfmn"))
  prism = _prism(obj, clients_per_round=2)
  data = _data()
  mean, var = features.client_stats(obj.features, np.asarray(data.images),
                                    np.asarray(data.counts))
  assert mean.shape == (4, 16 * 16)
  data = ClientData(data.images, data.counts, (jnp.asarray(mean), jnp.asarray(var)))
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=prism)
  chex.assert_shape(state.local_states.loss.v_mean, (4, 256))
  step = rnd.make_round_step(prism)
  new, metrics = step(state, data, jax.random.key(1))
  chex.assert_tree_all_finite(metrics)
  moved = np.any(np.asarray(new.local_states.loss.v_mean) != 0, axis=1)
  assert moved.sum() == 2                       # the two participants, no one else
  with pytest.raises(ValueError, match="real_stats"):
    step(state, _data(), jax.random.key(1))


def test_gfmn_nets_start_from_each_clients_own_draw(tiny_model):
  """v_init="torch": every client builds its own nn.Linear nets (official), so the initial
  moving averages differ between clients; client k's is the loss's init for client k."""
  obj = client.Objective(tiny_model, features.pixels, losses.get_loss("gfmn", v_init="torch"))
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=_prism(obj))
  v = np.asarray(state.local_states.loss.v_mean)
  assert len({row.tobytes() for row in v}) == v.shape[0]
  bound = 1 / np.sqrt(v.shape[1])
  assert np.all(np.abs(v) <= bound) and np.abs(v).max() > 0.9 * bound
  np.testing.assert_array_equal(v[2], obj.loss.init(v.shape[1], 2).v_mean)


def test_chunked_clients_match_all_at_once(tiny_model, tiny_objective):
  """lax.map over chunks of vmapped clients computes the same round."""
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  data, key = _data(), jax.random.key(3)
  whole, m1 = rnd.make_round_step(_prism(tiny_objective))(state, data, key)
  chunked, m2 = rnd.make_round_step(_prism(tiny_objective, client_chunk=2))(state, data, key)
  _assert_scores_match(whole.scores, chunked.scores, max_flips=0.02)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-4)
  # 3 of 4 clients in chunks of 2: one padded slot with weight 0, still correct shapes.
  odd, _ = rnd.make_round_step(_prism(tiny_objective, clients_per_round=3, client_chunk=2))(
      state, data, key)
  chex.assert_trees_all_equal_shapes(odd.scores, state.scores)
  with pytest.raises(ValueError, match="client_chunk"):
    _prism(tiny_objective, client_chunk=0)


def test_chunk_larger_than_the_round_pads_no_slots(tiny_model, tiny_objective):
  """A chunk above the clients per round runs the round's clients only, as no chunk does."""
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  data, key = _data(), jax.random.key(3)
  runs = [rnd.make_round_step(_prism(tiny_objective, clients_per_round=3, client_chunk=c),
                              with_uploads=True)(state, data, key) for c in (None, 50)]
  (plain, _, (_, ids, _)), (big, _, (_, big_ids, _)) = runs
  chex.assert_shape(big_ids, (3,))               # not 50 slots
  chex.assert_trees_all_equal(plain.scores, big.scores)
  np.testing.assert_array_equal(ids, big_ids)


def test_donated_round_reuses_the_state_buffers(tiny_model, tiny_objective):
  prism = _prism(tiny_objective)
  data = _data()
  plain = rnd.make_round_step(prism)
  donating = rnd.make_round_step(prism, donate=True)
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0))
  expected, _ = plain(state, data, jax.random.key(1))
  mine = jax.tree.map(jnp.copy, state)
  got, _ = donating(mine, data, jax.random.key(1))
  chex.assert_trees_all_equal(got.scores, expected.scores)
  assert all(x.is_deleted() for x in jax.tree.leaves(mine.scores))   # donated, not copied
  got, _ = donating(got, data, jax.random.key(2))                    # and again: 1 executable
  assert donating.jitted._cache_size() == 1


def test_carried_optimizer_state_lives_in_the_round_state(tiny_model):
  """Official behaviour in the jitted round: each participant's Adam state (step count,
  moments) is written back per client; the others' stay as they were."""
  objective = client.Objective(tiny_model, features.pixels, losses.gaussian_mmd)
  local = client.LocalConfig(local_steps=2, batch_size=4, carry_optimizer=True)
  prism = algorithm.Prism(objective, local, num_clients=4, clients_per_round=2)
  state = algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=prism)
  step = rnd.make_round_step(prism)
  counts = lambda s: np.asarray(jax.tree.leaves(s.local_states.opt)[0])   # noqa: E731
  np.testing.assert_array_equal(counts(state), 0)
  seen = np.zeros(4, int)
  for r in range(3):
    key = jax.random.key(r)
    idx, _ = rnd.select_clients(jax.random.split(key, 3)[0], 4, 2, 2)
    seen[np.asarray(idx)] += 1
    state, _ = step(state, _data(4), key)
    np.testing.assert_array_equal(counts(state), 2 * seen)


@pytest.mark.parametrize("reset", [True, False])
def test_refine_switches_the_loss_at_its_round(tiny_model, reset):
  """With ``Refine(start=3, loss)`` rounds 1-2 equal a run on the objective's loss and
  round 3 equals a run on ``loss`` from that state: optimizer counts restart at the switch
  with ``reset_optimizer``, and carry over without it."""
  local = client.LocalConfig(local_steps=2, batch_size=4, carry_optimizer=True)
  plain = algorithm.Prism(client.Objective(tiny_model, features.pixels, losses.gaussian_mmd), local,
                    num_clients=4)
  refine = algorithm.Refine(3, losses.energy_distance, reset_optimizer=reset)
  phased = dataclasses.replace(plain, refine=refine)
  assert phased.refined().objective.loss == refine.loss
  data, state = _data(4), algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=plain)
  expect = got = state
  step_plain, step_phased = rnd.make_round_step(plain), rnd.make_round_step(phased)
  step_refined = rnd.make_round_step(phased.refined())
  for r in range(4):
    key = jax.random.key(r)
    if r == 2 and reset:   # what the refinement's first round starts from
      expect = expect.replace(local_states=algorithm.init_state(
          tiny_model, 0, jax.random.key(0), prism=plain).local_states)
    expect, m_expect = (step_plain if r < 2 else step_refined)(expect, data, key)
    got, m_got = step_phased(got, data, key)
    chex.assert_trees_all_close(got.scores, expect.scores, atol=1e-6)
    np.testing.assert_allclose(m_got["loss"], m_expect["loss"], rtol=1e-5)
  counts = np.asarray(jax.tree.leaves(got.local_states.opt)[0])
  np.testing.assert_array_equal(counts, 2 * 2 if reset else 2 * 4)
  assert set(step_phased.executables) == {False, True}   # one executable per phase


def test_refine_local_steps_sets_the_refinement_rounds_steps(tiny_model):
  """``Refine(local_steps=3)``: the first loss's rounds take 2 local steps, the refinement's
  3 (the carried optimizer's step count says how many ran), and a refinement round equals
  one of the refined algorithm."""
  local = client.LocalConfig(local_steps=2, batch_size=4, carry_optimizer=True)
  plain = algorithm.Prism(client.Objective(tiny_model, features.pixels, losses.gaussian_mmd), local,
                    num_clients=4)
  phased = dataclasses.replace(plain, refine=algorithm.Refine(
      2, losses.energy_distance, reset_optimizer=False, local_steps=3))
  assert phased.refined().local.local_steps == 3
  data, state = _data(4), algorithm.init_state(tiny_model, 0, jax.random.key(0), prism=plain)
  step = rnd.make_round_step(phased)
  state, _ = step(state, data, jax.random.key(0))
  counts = lambda s: np.asarray(jax.tree.leaves(s.local_states.opt)[0])  # noqa: E731
  np.testing.assert_array_equal(counts(state), 2)
  expect, m_expect = rnd.make_round_step(phased.refined())(state, data, jax.random.key(1))
  state, m_got = step(state, data, jax.random.key(1))
  np.testing.assert_array_equal(counts(state), 2 + 3)
  chex.assert_trees_all_close(state.scores, expect.scores, atol=1e-6)
  np.testing.assert_allclose(m_got["loss"], m_expect["loss"], rtol=1e-5)
  with pytest.raises(ValueError, match="refine.local_steps must be >= 1, got 0"):
    algorithm.Refine(2, losses.gaussian_mmd, local_steps=0)


def test_refine_refuses_stateful_losses(tiny_model):
  gfmn = client.Objective(tiny_model, features.pixels, losses.gfmn_moment_matching())
  with pytest.raises(ValueError, match="refine needs stateless losses.*objective's loss"):
    algorithm.Prism(gfmn, refine=algorithm.Refine(2, losses.gaussian_mmd))
  with pytest.raises(ValueError, match="refine.start must be a round >= 1"):
    algorithm.Refine(0, losses.gaussian_mmd)
