"""One federated round as one jitted step (Algorithm 1).

    round_step(server_state, client_data, key) -> (server_state, metrics)

1. regenerate the frozen weights from ``server_state.seed`` (on each device; never sent);
2. pick this round's clients (all, or a random subset of fixed size: no recompilation);
3. every selected client runs :func:`prism_jax.client.client_update` -- ``vmap`` over the
   client axis, which ``shard_map`` spreads over the devices of a 1-D ``"clients"`` mesh
   (:mod:`prism_jax.sharding`);
4. the server's rule (:mod:`prism_jax.rules`) reduces the uploads over the client axis to
   the round's broadcast and applies it (:func:`server_step`), as every client does with
   the downlink message.
Clients hold different amounts of data: ``ClientData`` is padded to a common length and
carries per-client ``counts``. When the number of selected clients does not divide the
number of devices, empty slots with aggregation weight 0 fill the last device.
"""
from __future__ import annotations

import concurrent.futures
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prism_jax import client, generator, multihost
from prism_jax.algorithm import Prism, ServerState
from prism_jax.data import ClientData
from prism_jax.sharding import AXIS, client_mesh, client_slots, compiler_options, state_shardings


def select_clients(key: jax.Array, num_clients: int, per_round: int, slots: int):
  """Indices of this round's clients, padded to ``slots``, and their weights (0 = empty slot)."""
  if per_round == num_clients:
    idx = jnp.arange(num_clients)
  else:
    idx = jax.random.choice(key, num_clients, (per_round,), replace=False)
  pad = slots - per_round
  idx = jnp.concatenate([idx, jnp.zeros((pad,), idx.dtype)])
  weights = jnp.concatenate([jnp.ones((per_round,)), jnp.zeros((pad,))])
  return idx, weights


def server_step(prism: Prism, key: jax.Array, state: ServerState, uploads, slot_weights,
                rotation=None, participants: int | None = None):
  """The server's half of a round, from the uploads ``[K, ...]`` (slot weight 0: empty):
  the rule's broadcast, applied to the global state. ``participants`` (static): the number
  of non-empty slots, ``prism.per_round`` unless clients dropped out (a deployment).
  Returns the state with the new global parameters and the round counter advanced, the
  server's metrics and the broadcast."""
  rule = prism.rule
  participants = prism.per_round if participants is None else participants
  bcast, theta_hat = rule.aggregate(key, state.scores, uploads, slot_weights, participants,
                                    rotation)
  scores, aux = rule.apply(state.scores, state.aux, bcast, state.round)
  metrics = rule.metrics(bcast, theta_hat, scores)
  return state.replace(scores=scores, round=state.round + 1, aux=aux), metrics, bcast


def packed_masks(uploads) -> jax.Array:
  """The bool leaves of uploads ``[K, ...]`` as packed bits ``[K, ceil(n / 8)]`` (uint8),
  leaves in PyTree order: what leaves the device when the host entropy-codes the uploads."""
  bits = [u.reshape(u.shape[0], -1) for u in jax.tree.leaves(uploads) if u.dtype == jnp.bool_]
  return jnp.packbits(jnp.concatenate(bits, axis=1), axis=1)


def client_update_fn(prism: Prism, round_: int = 1) -> Callable:
  """:func:`prism_jax.client.client_update` as ``prism`` runs it (the simulator's round and
  a deployed client alike) in round ``round_`` (1-based): the rule's float layers and
  upload (PBM: the bits of the update under the round's shared rotation ``rot``), and
  from ``prism.refine.start`` on the refinement loss. The host knows the round, so each
  phase of a curriculum is its own function (and compiled executable)."""
  p = prism.phase(round_)
  update = functools.partial(client.client_update, objective=p.objective, cfg=p.local,
                             send_probs=prism.send_probs())

  def run(scores, weights, images, count, key, *, feature_params=None, real_stats=None,
          local=client.LocalState(), rot=()):
    return update(scores, weights, images, count, key, feature_params=feature_params,
                  real_stats=real_stats, local=local, upload=prism.rule.upload(scores, rot))
  return run


def sharded_clients(prism: Prism, mesh: Mesh, chunk: int | None, refining: bool):
  """The round's clients of one curriculum phase, ``vmap``ped and ``shard_map``ped:
  ``(scores, (weights, feature_params, rot), images, counts, real_stats, local, keys) ->
  (uploads, local states, metrics)``, each with a leading slot axis. A device runs its
  clients all at once, or ``chunk`` at a time (``lax.map``: memory bounded by the chunk)."""
  update = client_update_fn(prism, prism.refine.start if refining else 1)

  def one_client(scores, shared, images, count, real_stats, local, key):
    weights, feature_params, rot = shared
    return update(scores, weights, images, count, key, feature_params=feature_params,
                  real_stats=real_stats, local=local, rot=rot)
  vmapped = jax.vmap(one_client, in_axes=(None, None, 0, 0, 0, 0, 0))

  def device_clients(scores, shared, *per_client):
    n = per_client[0].shape[0]
    # Each client's local scan starts from the global scores and ends with its own: mark
    # them as varying over the mesh so the scan's carry keeps one type.
    scores = jax.tree.map(lambda x: jax.lax.pcast(x, AXIS, to="varying"), scores)
    if not chunk or chunk >= n:
      return vmapped(scores, shared, *per_client)
    split = jax.tree.map(lambda x: x.reshape(n // chunk, chunk, *x.shape[1:]), per_client)
    out = jax.lax.map(lambda xs: vmapped(scores, shared, *xs), split)
    return jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), out)

  return jax.shard_map(device_clients, mesh=mesh, in_specs=(P(), P()) + (P(AXIS),) * 5,
                       out_specs=(P(AXIS), P(AXIS), P(AXIS)))


def check_inputs(prism: Prism, data: ClientData) -> None:
  if data.num_clients != prism.num_clients:
    raise ValueError(f"client_data holds {data.num_clients} clients, the algorithm was "
                     f"built for {prism.num_clients}")
  if prism.objective.uses_stats and not jax.tree.leaves(data.real_stats):
    raise ValueError("the loss compares against real feature statistics: build ClientData "
                     "with real_stats (features.client_stats)")


def local_states_in(prism: Prism, state: ServerState, refining: bool):
  """The clients' local states entering the round: at a curriculum's switch the carried
  optimizer states restart (zeros: a client's initial state)."""
  local = state.local_states
  if refining and prism.refine.reset_optimizer:
    restart = state.round + 1 == prism.refine.start
    local = local.replace(opt=jax.tree.map(
        lambda x: jnp.where(restart, jnp.zeros_like(x), x), local.opt))
  return local


def round_body(prism: Prism, clients: dict, slots: int, mesh: Mesh, with_uploads: bool,
               state: ServerState, data: ClientData, key: jax.Array, feature_params,
               refining: bool = False):
  """The traced round (Algorithm 1): select, train the clients, run the server's rule."""
  check_inputs(prism, data)
  k_select, k_clients, k_server = jax.random.split(key, 3)
  weights = generator.init_weights(prism.model, state.seed)
  idx, slot_weights = select_clients(k_select, prism.num_clients, prism.per_round, slots)
  everyone = prism.per_round == slots == prism.num_clients
  before = local_states_in(prism, state, refining)
  per_client = (data.images, data.counts, data.real_stats, before)
  if not everyone:   # gather this round's clients (no gather when all take part in order)
    per_client = jax.tree.map(lambda x: x[idx], per_client)
  # A client's randomness depends on its id, not on its slot or the device count.
  client_keys = jax.vmap(lambda i: jax.random.fold_in(k_clients, i))(idx)
  rotation = prism.rule.rotation(key)   # e.g. PBM's rotation, shared with the clients
  rot = () if rotation is None else prism.rule.shared(rotation, state.scores)
  uploads, local_states, cm = clients[refining](state.scores, (weights, feature_params, rot),
                                                *per_client, client_keys)
  if not everyone:   # write back the participants' local states; padding slots are dropped
    target = jnp.where(slot_weights > 0, idx, prism.num_clients)
    local_states = jax.tree.map(lambda all_, new: all_.at[target].set(new, mode="drop"),
                                before, local_states)
  w = slot_weights / jnp.sum(slot_weights)
  metrics = {name: jnp.dot(w, v) for name, v in cm.items()}
  new_state, server_metrics, bcast = server_step(prism, k_server, state, uploads,
                                                 slot_weights, rotation)
  metrics.update(server_metrics)
  # Outputs leave placed as the next round's input is (no host round trip between rounds);
  # what the host reads (metrics, uploads) is replicated, so every process holds it.
  new_state = jax.lax.with_sharding_constraint(
      new_state.replace(local_states=local_states),
      state_shardings(new_state, mesh, prism.num_clients))
  out = (metrics,)
  if with_uploads:
    out += ((packed_masks(uploads), jnp.where(slot_weights > 0, idx, -1), bcast),)
  return (new_state, *jax.lax.with_sharding_constraint(out, NamedSharding(mesh, P())))


def make_round_step(prism: Prism, mesh: Mesh | None = None,
                    with_uploads: bool = False, donate: bool = False) -> Callable:
  """Builds the jitted ``round_step(server_state, client_data, key)`` for ``prism``.

  It returns ``(server_state, metrics)``; with ``with_uploads`` also
  ``(packed_masks [slots, bytes], client_ids [slots], broadcast)`` (id -1: empty slot), for
  host-side entropy coding of both directions (:mod:`prism_jax.coding`,
  :mod:`prism_jax.downlink`). With ``donate`` the input state's buffers are reused for the
  output (one copy of the scores and loss states in device memory instead of two); the
  caller must not use the input state afterwards."""
  mesh = client_mesh() if mesh is None else mesh
  chunk, slots = client_slots(prism, mesh.size)
  phases = (False,) if prism.refine is None else (False, True)
  clients = {refining: sharded_clients(prism, mesh, chunk, refining) for refining in phases}
  jitted = jax.jit(functools.partial(round_body, prism, clients, slots, mesh, with_uploads),
                   static_argnums=(4,), donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options())
  replicated = NamedSharding(mesh, P())
  feature_params = multihost.put(prism.objective.features.params, replicated)
  ahead = {}   # a curriculum's compiled phases (refining: executable)

  def step(state: ServerState, data: ClientData, key: jax.Array):
    # Placing the first input state as every output state is placed keeps all rounds on one
    # compiled executable. The extractor's frozen weights are an argument, not a constant.
    refining = prism.refine is not None and prism.refining(
        int(multihost.to_host(state.round)) + 1)   # (waits for the previous round)
    state = multihost.put(state, state_shardings(state, mesh, prism.num_clients))
    args = (state, data, multihost.put(key, replicated), feature_params)
    if prism.refine is None:
      return jitted(*args)
    if not ahead:   # a curriculum: the phases still to come compile at once, on host threads
      lowered = {phase: jitted.lower(*args, phase) for phase in {refining, True}}
      with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
        ahead.update(zip(lowered, pool.map(lambda low: low.compile(), lowered.values())))
    return ahead[refining](*args)

  step.executables, step.jitted = ahead, jitted
  return step
