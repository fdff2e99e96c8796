"""What the server and the nodes of a deployment agree on (:class:`Deployment`: the
algorithm and the seeds, from one config), how a node brings its copy of the global scores
up to date from the broadcasts it missed (:func:`sync`), and what the jitted simulator
computes for the same deployment (:func:`reference`)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import client, configure, downlink, masking
from prism_jax import round as rnd
from prism_jax.algorithm import Prism, ServerState, init_state
from prism_jax.data import ClientData
from prism_jax.flower.wire import tree
from prism_jax.sharding import compiler_options


@dataclasses.dataclass(frozen=True)
class Deployment:
  """What server and clients agree on: the algorithm and the seeds (all from one config)."""
  prism: Prism
  seed: int = 0            # the frozen weights' seed
  train_seed: int = 0      # the round and client keys
  rounds: int = 10
  score_std: float = 1.0
  coding_floor: float = 1e-3
  dp_delta: float = 1e-5

  def __post_init__(self):
    if not self.prism.rule.sends_masks:
      raise ValueError(f"the Flower adapter exchanges masks; method {self.prism.method!r} "
                       f"uploads {self.prism.rule.uploads} and is not supported")

  @classmethod
  def from_config(cls, config) -> "Deployment":
    return cls(configure.build(config), config.seed, config.train_seed, config.rounds,
               config.score_std, (config.get("coding") or {}).get("floor", 1e-3),
               (config.get("dp") or {}).get("delta", 1e-5))

  @property
  def like(self):
    """Shapes of the masked weights (structure of scores and masks)."""
    return self.prism.weight_shapes

  @functools.cached_property
  def num_weights(self) -> int:
    return masking.num_weights(self.like)

  @property
  def bit_leaves(self) -> list[bool]:
    return self.prism.bit_leaves

  @functools.cached_property
  def fingerprint(self) -> str:
    """Identifies the deployment across processes (the app may be re-created per message)."""
    p = self.prism
    refine = p.refine and (p.refine.start, p.refine.reset_optimizer, p.refine.local_steps)
    desc = (p.model, p.local, p.rule, p.num_clients, p.per_round,
            p.objective.features.name, p.objective.uses_stats, p.objective.estimator, refine,
            self.seed)
    return hashlib.sha1(repr(desc).encode()).hexdigest()

  def keys(self):
    """``(k_init, k_rounds)`` of :func:`prism_jax.configure.run_keys`, as a training run
    uses."""
    k_init, k_rounds, _, _ = configure.run_keys(self.train_seed)
    return k_init, k_rounds

  def round_plan(self, r: int):
    """Round ``r``'s ``(client ids, client key, server key, PBM rotation)``, as the
    simulator derives them."""
    p, k_round = self.prism, jax.random.fold_in(self.keys()[1], r)
    k_select, k_clients, k_server = jax.random.split(k_round, 3)
    idx, _ = rnd.select_clients(k_select, p.num_clients, p.per_round, p.per_round)
    return [int(i) for i in np.asarray(idx)], k_clients, k_server, p.rule.rotation(k_round)

  @functools.cached_property
  def initial(self) -> ServerState:
    """Round 0's global state, which every side derives from the shared seeds."""
    state = init_state(self.prism.model, self.seed, self.keys()[0], self.score_std,
                           self.prism)
    return state.replace(local_states=client.LocalState())   # local states live on the nodes

  @functools.cached_property
  def apply(self):
    """The jitted :meth:`prism_jax.rules.Rule.apply`: how the server and every node turn a
    broadcast into the next global state (one program, so all copies agree bitwise)."""
    return jax.jit(self.prism.rule.apply, compiler_options=compiler_options())


def digest(scores) -> str:
  """A short hash of the scores' bytes: server and client compare their copies with it."""
  h = hashlib.sha256()
  for x in jax.tree.leaves(jax.device_get(scores)):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


def sync(dep: Deployment, scores, aux, held: int, payloads, first: int):
  """A node's global state after applying the broadcasts ``payloads`` of rounds ``first,
  first + 1, ...`` to its state of round ``held``; raises
  :class:`prism_jax.downlink.DownlinkError` if one cannot be applied."""
  if payloads and first != held + 1:
    raise downlink.DownlinkError(f"broadcasts start at round {first}, but this client holds "
                                 f"round {held}")
  for r, payload in enumerate(payloads, start=first):
    bcast = downlink.decode(payload, r, jax.device_get(scores), dep.bit_leaves,
                            dep.coding_floor)
    scores, aux = dep.apply(scores, aux, bcast, jnp.int32(r - 1))
    held = r
  return scores, aux, held


def split_data(data: ClientData, client_id: int) -> tuple:
  """``load_data`` for a node that takes its share of a simulator ``ClientData``."""
  n = int(data.counts[client_id])
  stats = jax.tree.map(lambda x: x[client_id], data.real_stats)
  return np.asarray(data.images[client_id, :n]), stats


def load_scores(path: str, like):
  """The final global scores a :func:`server_app` run wrote."""
  with np.load(path) as f:
    return tree([f[f"arr_{i}"] for i in range(len(f.files))], like)


def reference(dep: Deployment, data: ClientData):
  """What the jitted simulator computes for the same deployment and data: the final global
  scores and per-round ``{"loss", "seconds"}`` (a Flower run of ``dep`` reproduces both
  scores and losses)."""
  step = rnd.make_round_step(dep.prism)
  k_init, k_rounds = dep.keys()
  state = init_state(dep.prism.model, dep.seed, k_init, dep.score_std, dep.prism)
  rows = []
  for r in range(dep.rounds):
    t0 = time.perf_counter()
    state, m = step(state, data, jax.random.fold_in(k_rounds, r))
    rows.append({"loss": float(m["loss"]), "seconds": time.perf_counter() - t0})
  return state.scores, rows
