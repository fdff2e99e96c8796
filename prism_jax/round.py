"""One PRISM federated round as one jitted step (Algorithm 1).

    round_step(server_state, client_data, key) -> (server_state, metrics)

1. regenerate the frozen weights from ``server_state.seed`` (on each device; never sent);
2. pick this round's clients (all, or a random subset of fixed size: no recompilation);
3. every selected client runs :func:`prism_jax.client.client_update` -- ``vmap`` over the
   client axis, which ``shard_map`` spreads over the devices of a 1-D ``"clients"`` mesh;
4. the server reduces the uploaded masks over the client axis to per-weight counts, the
   round's broadcast, and applies it with MADA (:func:`apply_broadcast`), as every client
   does with the downlink message. With the Poisson binomial mechanism (:mod:`prism_jax.pbm`)
   clients upload the bits of their rotated updates instead, and the counts are their sums.
Clients hold different amounts of data: ``ClientData`` is padded to a common length and
carries per-client ``counts``. When the number of selected clients does not divide the
number of devices, empty slots with aggregation weight 0 fill the last device.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prism_jax import baselines, client, generator, losses, masking, multihost, pbm, server

AXIS = "clients"


@flax.struct.dataclass
class ServerState:
  """The simulation's state: the frozen network's seed, the global scores, the round
  counter and each client's :class:`~prism_jax.client.LocalState` (GFMN moving averages,
  carried optimizer state; leading axis K; in a deployment it stays on the clients). For
  the baselines, ``scores`` holds the dense weights (``"fedavg"``) and ``aux`` FedPM's Beta
  posteriors."""
  seed: jax.Array    # int32 []; weights = generator.init_weights(model, seed)
  scores: Any        # PyTree like the generator's params
  round: jax.Array   # int32 []
  local_states: Any = client.LocalState()
  aux: Any = ()


@flax.struct.dataclass
class ClientData:
  """All clients' data, padded: ``images [K, N_max, H, W, C]`` and ``counts [K]``, plus
  each client's precomputed real-feature ``(mean, var)`` ``[K, D]`` for stats losses."""
  images: jax.Array
  counts: jax.Array
  real_stats: Any = ()

  @property
  def num_clients(self) -> int:
    return self.images.shape[0]


@dataclasses.dataclass(frozen=True)
class Refine:
  """A loss curriculum: from round ``start`` (1-based) on, clients train on ``loss`` instead
  of the objective's. A transport loss draws whole digit shapes with soft strokes, and the
  pixel Gaussian MMD then sharpens the strokes it starts from without breaking the shapes
  (README, "Whole digits or sharp strokes"). Both losses must be stateless (their state
  would otherwise change form mid-run). ``reset_optimizer``: the clients' carried optimizer
  states restart at ``start`` (their moments were estimated on the other loss's gradients).
  ``local_steps``: the refinement rounds' local steps (None: the first loss's)."""
  start: int
  loss: Any                              # a losses.FeatureLoss (or a plain loss)
  reset_optimizer: bool = True
  local_steps: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "loss", losses.as_feature_loss(self.loss))
    if self.start < 1:
      raise ValueError(f"refine.start must be a round >= 1, got {self.start}")
    if self.local_steps is not None and self.local_steps < 1:
      raise ValueError(f"refine.local_steps must be >= 1, got {self.local_steps}")

  def check(self, objective: client.Objective) -> None:
    for name, loss in (("the objective's loss", objective.loss), ("refine.loss", self.loss)):
      state = jax.eval_shape(functools.partial(loss.init, 1))
      if loss.real != "batch" or jax.tree.leaves(state):
        raise ValueError(f"refine needs stateless losses on real batches; {name} carries "
                         "state or compares against statistics (e.g. gfmn)")

  def restarts(self, last: int, round_: int) -> bool:
    """Whether a client that last trained in round ``last`` drops its carried optimizer
    state before training in round ``round_``."""
    return self.reset_optimizer and last < self.start <= round_


@dataclasses.dataclass(frozen=True)
class Prism:
  """The algorithm's static description (everything that shapes the compiled round)."""
  objective: client.Objective
  local: client.LocalConfig = client.LocalConfig()
  server: server.ServerConfig = server.ServerConfig()
  num_clients: int = 10
  clients_per_round: int | None = None   # None: all clients every round
  alpha: float = 0.0                     # PRISM-alpha: last fraction of layers send theta
  client_chunk: int | None = None        # clients vmapped at once per device (lax.map over
                                         # chunks); None: all of a device's clients at once
  method: str = "prism"                  # or a baseline: "fedpm" | "fedavg" (baselines.py)
  fedpm_reset: int | None = None         # FedPM prior reset period; None: ceil(1 / q)
  pbm: pbm.Mechanism | None = None       # DP by the Poisson binomial mechanism (pbm.py)
  refine: Refine | None = None           # a second loss from a given round on

  def __post_init__(self):
    baselines.check_method(self.method)
    if self.method != "prism" and self.alpha > 0:
      raise ValueError(f"PRISM-alpha (alpha={self.alpha}) applies to method 'prism' only, "
                       f"not {self.method!r}")
    if self.method == "fedavg":
      if self.local.dp_noise_std > 0:
        raise ValueError("DP noise is defined on mask probabilities; method 'fedavg' "
                         "uploads dense weights and has no DP mechanism here")
      object.__setattr__(self, "objective",
                         dataclasses.replace(self.objective, trains="weights"))
    if self.pbm is not None and (self.method != "prism" or self.alpha or
                                 self.local.dp_noise_std or self.local.dp_mode != "algorithm"):
      raise ValueError("the PBM mechanism applies to PRISM's masks only: not with a baseline, "
                       "PRISM-alpha or the Gaussian noise on theta (local.dp_noise_std)")
    if self.pbm is not None and self.per_round < 2:
      raise ValueError(f"PBM sums at least 2 participants per round, got {self.per_round}")
    if self.fedpm_reset is not None and self.fedpm_reset < 1:
      raise ValueError(f"fedpm_reset must be >= 1, got {self.fedpm_reset}")
    if self.client_chunk is not None and self.client_chunk < 1:
      raise ValueError(f"client_chunk must be >= 1, got {self.client_chunk}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
    if self.num_clients < 1:
      raise ValueError(f"num_clients must be >= 1, got {self.num_clients}")
    if self.refine is not None:
      self.refine.check(self.objective)
    if not 1 <= self.per_round <= self.num_clients:
      raise ValueError(f"clients_per_round must lie in [1, num_clients={self.num_clients}], "
                       f"got {self.clients_per_round}")

  def refining(self, round_: int) -> bool:
    """Whether round ``round_`` (1-based) is one of the curriculum's refinement rounds."""
    return self.refine is not None and round_ >= self.refine.start

  def phase(self, round_: int) -> "Prism":
    """The algorithm the clients run in round ``round_`` (1-based): :meth:`refined` from
    ``refine.start`` on, otherwise this one."""
    return self.refined() if self.refining(round_) else self

  def refined(self) -> "Prism":
    """The algorithm of the refinement rounds: the objective on ``refine.loss``, for
    ``refine.local_steps`` local steps when set."""
    steps = self.refine.local_steps or self.local.local_steps
    return dataclasses.replace(
        self, objective=dataclasses.replace(self.objective, loss=self.refine.loss),
        local=dataclasses.replace(self.local, local_steps=steps), refine=None)

  @property
  def per_round(self) -> int:
    return self.num_clients if self.clients_per_round is None else self.clients_per_round

  @property
  def model(self) -> generator.ResNetGenerator:
    return self.objective.model

  @property
  def sends_masks(self) -> bool:
    """Whether clients upload binary masks (PRISM, FedPM) rather than dense weights."""
    return self.method != "fedavg"

  def send_probs(self, weights):
    """Per-layer choice of float32 uploads (bools): PRISM-alpha's last layers, every layer
    for dense FedAvg; None when every layer sends bits."""
    if not self.sends_masks:
      return jax.tree.map(lambda _: True, weights)
    return generator.prob_layers(weights, self.alpha) if self.alpha > 0 else None


def init_state(model: generator.ResNetGenerator, seed: int, key: jax.Array,
               score_std: float = 1.0, prism: Prism | None = None) -> ServerState:
  """Round-0 state: scores ~ N(0, score_std^2) over the weights generated from ``seed``;
  with ``prism``, also every client's initial local state (GFMN moving averages, optimizer
  state when carried over) and the baselines' state (FedPM: Beta(1, 1) priors; FedAvg: the
  seed's weights, trained)."""
  weights = jax.eval_shape(lambda: generator.init_weights(model, seed))
  scores = generator.init_scores(key, weights, score_std)
  local, aux = client.LocalState(), ()
  if prism is not None:
    if prism.method == "fedavg":
      scores = generator.init_weights(model, seed)
    elif prism.method == "fedpm":
      aux = baselines.beta_init(scores)
    local = jax.vmap(lambda c: client.init_local_state(prism.objective, prism.local, scores,
                                                       c))(jnp.arange(prism.num_clients))
  return ServerState(jnp.asarray(seed, jnp.int32), scores, jnp.zeros((), jnp.int32), local,
                     aux)


def client_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all) whose axis is the client axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(devices, (AXIS,))


def client_sharding(mesh: Mesh, num_clients: int) -> NamedSharding:
  """Arrays with a leading client axis: split over the mesh if the clients divide evenly over
  its devices, else replicated."""
  return NamedSharding(mesh, P(AXIS) if num_clients % mesh.size == 0 else P())


def shard_client_data(data: ClientData, mesh: Mesh) -> ClientData:
  """Places in-memory client data on the mesh (:func:`client_sharding`). Across hosts, build
  each process's rows only: :func:`prism_jax.multihost.client_arrays`."""
  return jax.device_put(data, client_sharding(mesh, data.num_clients))


def state_shardings(state: ServerState, mesh: Mesh, num_clients: int) -> ServerState:
  """Where the round keeps its state: the global parameters replicated on every device, each
  client's local state with that client's data (:func:`client_sharding`)."""
  replicated = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda _: replicated, state)
  return shardings.replace(local_states=jax.tree.map(
      lambda _: client_sharding(mesh, num_clients), state.local_states))


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


def _mean_entropy_bits(theta) -> jax.Array:
  """Mean binary entropy of theta, bits per weight: the size of an ideally coded mask."""
  def h(t):
    t = jnp.clip(t, 1e-7, 1 - 1e-7)
    return -(t * jnp.log2(t) + (1 - t) * jnp.log2(1 - t))
  return masking.mean_over_weights(jax.tree.map(h, theta))


PBM_ROTATION = 0x50424D   # fold_in tag of the round key that gives PBM's shared rotation


def pbm_rotation(rotation_key_data: jax.Array, scores):
  """PBM's rotation of a round, from the key data that the broadcast carries."""
  return pbm.rotation(jax.random.wrap_key_data(rotation_key_data),
                      masking.num_weights(scores))


def apply_broadcast(prism: Prism, scores, aux, bcast: server.Broadcast, round_: jax.Array):
  """The next global state from a round's :class:`~prism_jax.server.Broadcast`: PRISM's
  :func:`~prism_jax.server.rebuild` (aggregation + MADA), the PBM estimate of the mean
  update (:func:`prism_jax.pbm.new_scores`, then MADA) or FedPM's posterior update.
  The server updates its own state with it inside the jitted round and a client applies it
  to the downlink message, so both hold the same scores. Returns ``(scores, aux)``."""
  if prism.method == "fedpm":
    reset = prism.fedpm_reset or baselines.fedpm_reset_every(prism.num_clients, prism.per_round)
    theta, aux = baselines.fedpm_rebuild(aux, bcast.counts, bcast.participants, round_,
                                         reset, prism.server.smoothing)
    return server.scores_from_probs(theta), aux
  if prism.pbm is not None:
    new = pbm.new_scores(scores, bcast.counts, bcast.participants,
                         pbm_rotation(bcast.rotation, scores), prism.pbm, prism.server.smoothing)
    return (server.mix(scores, new, bcast.lam) if prism.server.mada else new), aux
  return server.rebuild(scores, bcast, prism.server), aux


def server_step(prism: Prism, key: jax.Array, state: ServerState, uploads, slot_weights,
                rotation=None, participants: int | None = None):
  """The server's half of a round, from the uploads ``[K, ...]`` (slot weight 0: empty):
  tally the masks into the round's broadcast (with MADA's lambda) and apply it
  (:func:`apply_broadcast`), or average FedAvg's dense weights. ``participants`` (static):
  the number of non-empty slots, ``prism.per_round`` unless clients dropped out (a
  deployment). Returns the state with new global parameters (and FedPM's posteriors), the
  round counter advanced, server metrics and the broadcast (None for FedAvg, which
  broadcasts its float32 weights)."""
  aux, metrics, bcast = state.aux, {}, None
  participants = prism.per_round if participants is None else participants
  if prism.method == "fedavg":
    scores = baselines.fedavg_update(uploads, slot_weights)
  else:
    counts, n = server.tally(uploads, slot_weights)
    if prism.pbm is not None:   # the sums of the bits: all the server sees (secure aggregation)
      new = pbm.new_scores(state.scores, counts, participants,
                           pbm_rotation(rotation, state.scores), prism.pbm,
                           prism.server.smoothing)
      theta_hat = masking.keep_prob(new)
    else:
      theta_hat = server.probs_from_counts(counts, n, prism.server.smoothing)
      new = server.scores_from_probs(theta_hat)
    lam = jnp.ones((), jnp.float32)
    if prism.method == "prism" and prism.server.mada:
      lam = server.mada_lambda(key, state.scores, new,
                               server.lambda_copies(prism.server, state.scores))
    if prism.pbm is not None:
      bcast = server.Broadcast(counts, participants, lam, rotation)
    else:
      bcast = server.make_broadcast(counts, participants, lam, prism.server.smoothing)
    scores, aux = apply_broadcast(prism, state.scores, aux, bcast, state.round)
    if prism.method == "fedpm":
      theta_hat = masking.keep_prob(scores)
    metrics = dict(mada_lambda=lam, density=masking.mean_over_weights(theta_hat),
                   mask_entropy_bits=_mean_entropy_bits(masking.keep_prob(scores)))
  return state.replace(scores=scores, round=state.round + 1, aux=aux), metrics, bcast


def packed_masks(uploads) -> jax.Array:
  """The bool leaves of uploads ``[K, ...]`` as packed bits ``[K, ceil(n / 8)]`` (uint8),
  leaves in PyTree order: what leaves the device when the host entropy-codes the uploads."""
  bits = [u.reshape(u.shape[0], -1) for u in jax.tree.leaves(uploads) if u.dtype == jnp.bool_]
  return jnp.packbits(jnp.concatenate(bits, axis=1), axis=1)


def client_update_fn(prism: Prism, round_: int = 1) -> Callable:
  """:func:`prism_jax.client.client_update` as ``prism`` runs it (the simulator's round and
  a deployed client alike) in round ``round_`` (1-based): PRISM-alpha's float layers, with
  PBM the upload of the update's bits under the round's rotation ``rot``
  (:func:`pbm_rotation`), and from ``prism.refine.start`` on the refinement loss. The
  host knows the round, so each phase of a curriculum is its own function (and compiled
  executable) rather than a branch inside one."""
  weights_shape = jax.eval_shape(lambda: generator.init_weights(prism.model, 0))
  send_probs = prism.send_probs(weights_shape)
  p = prism.phase(round_)
  update = functools.partial(client.client_update, objective=p.objective, cfg=p.local,
                             send_probs=send_probs)

  def run(scores, weights, images, count, key, *, feature_params=None, real_stats=None,
          local=client.LocalState(), rot=()):
    upload = None
    if prism.pbm is not None:   # the bits of the update theta_k - theta (pbm.py)
      upload = lambda local_scores, k: pbm.client_upload(k, local_scores, scores, rot,  # noqa: E731
                                                          prism.pbm)
    return update(scores, weights, images, count, key, feature_params=feature_params,
                  real_stats=real_stats, local=local, upload=upload)
  return run


# LLVM's optimisation level for the round's CPU code: at 1 instead of XLA's default 3 the
# round compiles 2-2.5x faster (default MNIST run: 26 -> 10 s; README, "Performance") and
# ran as fast or up to 7% faster in the timings there. XLA_FLAGS=
# --xla_backend_optimization_level=N takes precedence.
CPU_OPT_LEVEL = 1


def compiler_options() -> dict:
  """XLA options of the round's executables (and a Flower node's update): on CPU, LLVM
  optimisation level :data:`CPU_OPT_LEVEL` unless ``XLA_FLAGS`` sets one; else none."""
  if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get(
      "XLA_FLAGS", ""):
    return {}
  return {"xla_backend_optimization_level": CPU_OPT_LEVEL}


def round_rotation(prism: Prism, round_key: jax.Array):
  """PBM's rotation key data for the round with key ``round_key`` (None without PBM)."""
  if prism.pbm is None:
    return None
  return jax.random.key_data(jax.random.fold_in(round_key, PBM_ROTATION))


def client_slots(prism: Prism, devices: int) -> tuple[int | None, int]:
  """``(chunk, slots)``: the clients vmapped at once per device and the round's client slots,
  a multiple of ``devices * chunk`` (slots past ``per_round`` are empty). The chunk is capped
  at a device's share of the round, so a chunk larger than the round pads no empty work."""
  chunk = prism.client_chunk and min(prism.client_chunk, math.ceil(prism.per_round / devices))
  group = devices * (chunk or 1)
  return chunk, math.ceil(prism.per_round / group) * group


def make_round_step(prism: Prism, mesh: Mesh | None = None,
                    with_uploads: bool = False, donate: bool = False) -> Callable:
  """Builds the jitted ``round_step(server_state, client_data, key)`` for ``prism``.

  It returns ``(server_state, metrics)``; with ``with_uploads`` also
  ``(packed_masks [slots, bytes], client_ids [slots], broadcast)`` (id -1: empty slot), for
  host-side entropy coding of both directions (:mod:`prism_jax.coding`,
  :mod:`prism_jax.downlink`). With ``donate`` the input state's buffers are
  reused for the output (one copy of the scores and loss states in device memory instead of
  two); the caller must not use the input state afterwards."""
  mesh = client_mesh() if mesh is None else mesh
  chunk, slots = client_slots(prism, mesh.size)

  def phase_clients(refining: bool):
    """The shard-mapped clients of one curriculum phase."""
    update = client_update_fn(prism, prism.refine.start if refining else 1)

    def one_client(scores, shared, images, count, real_stats, local, key):
      weights, feature_params, rot = shared
      return update(scores, weights, images, count, key, feature_params=feature_params,
                    real_stats=real_stats, local=local, rot=rot)
    vmapped = jax.vmap(one_client, in_axes=(None, None, 0, 0, 0, 0, 0))

    def device_clients(scores, shared, *per_client):
      """This device's clients: all at once, or ``client_chunk`` at a time (``lax.map``),
      which bounds memory by the chunk instead of the number of clients."""
      n = per_client[0].shape[0]
      # Each client's local scan starts from the global scores and ends with its own: mark
      # them as varying over the mesh so the scan's carry keeps one type (carried optimizer
      # states).
      scores = jax.tree.map(lambda x: jax.lax.pcast(x, AXIS, to="varying"), scores)
      if not chunk or chunk >= n:
        return vmapped(scores, shared, *per_client)
      split = jax.tree.map(lambda x: x.reshape(n // chunk, chunk, *x.shape[1:]), per_client)
      out = jax.lax.map(lambda xs: vmapped(scores, shared, *xs), split)
      return jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), out)

    return jax.shard_map(device_clients, mesh=mesh, in_specs=(P(), P()) + (P(AXIS),) * 5,
                         out_specs=(P(AXIS), P(AXIS), P(AXIS)))
  clients = {False: phase_clients(False)}
  if prism.refine is not None:
    clients[True] = phase_clients(True)

  def round_step(state: ServerState, data: ClientData, key: jax.Array, feature_params,
                 refining: bool = False):
    if data.num_clients != prism.num_clients:
      raise ValueError(f"client_data holds {data.num_clients} clients, the algorithm was "
                       f"built for {prism.num_clients}")
    if prism.objective.uses_stats and not jax.tree.leaves(data.real_stats):
      raise ValueError("the loss compares against real feature statistics: build ClientData "
                       "with real_stats (features.client_stats)")
    k_select, k_clients, k_server = jax.random.split(key, 3)
    weights = generator.init_weights(prism.model, state.seed)
    idx, slot_weights = select_clients(k_select, prism.num_clients, prism.per_round, slots)
    everyone = prism.per_round == slots == prism.num_clients
    before = state.local_states
    if refining and prism.refine.reset_optimizer:   # every client, at the switch
      restart = state.round + 1 == prism.refine.start   # (zeros: a client's initial state)
      before = before.replace(opt=jax.tree.map(
          lambda x: jnp.where(restart, jnp.zeros_like(x), x), before.opt))
    per_client = (data.images, data.counts, data.real_stats, before)
    if not everyone:   # gather this round's clients (no gather when all take part in order)
      per_client = jax.tree.map(lambda x: x[idx], per_client)
    # A client's randomness depends on its id, not on its slot or the device count.
    client_keys = jax.vmap(lambda i: jax.random.fold_in(k_clients, i))(idx)
    rotation = round_rotation(prism, key)   # PBM: this round's rotation, shared with clients
    rot = () if rotation is None else pbm_rotation(rotation, state.scores)
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
    new_state = new_state.replace(local_states=local_states)
    # Outputs leave placed as the next round's input is (no host round trip between rounds);
    # what the host reads (metrics, uploads) is replicated, so every process holds it.
    new_state = jax.lax.with_sharding_constraint(
        new_state, state_shardings(new_state, mesh, prism.num_clients))
    out = (metrics,)
    if with_uploads:
      out += ((packed_masks(uploads), jnp.where(slot_weights > 0, idx, -1), bcast),)
    return (new_state, *jax.lax.with_sharding_constraint(out, replicated))

  jitted = jax.jit(round_step, static_argnums=(4,), donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options())
  replicated = NamedSharding(mesh, P())
  feature_params = multihost.put(prism.objective.features.params, replicated)

  ahead = {}   # a curriculum's compiled phases (refining: executable)

  @functools.wraps(round_step)
  def step(state: ServerState, data: ClientData, key: jax.Array):
    # Placing the first input state as every output state is placed keeps all rounds on one
    # compiled executable. The extractor's frozen weights are an argument, not a constant
    # baked into the executable.
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

  step.executables = ahead
  step.jitted = jitted
  return step
