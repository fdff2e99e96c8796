"""The algorithm's static description and its state between rounds.

* :class:`Prism`: everything that shapes the compiled round: what a client minimises
  (:class:`~prism_jax.client.Objective`), how it trains (:class:`~prism_jax.client.LocalConfig`),
  the server's :mod:`rule <prism_jax.rules>`, the number of clients and how many take
  part per round, and an optional loss curriculum (:class:`Refine`).
* :class:`ServerState`: the seed of the frozen weights, the global scores, the round
  counter and each client's local state; :func:`init_state` builds round 0's.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from prism_jax import client, generator, losses, rules


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


@dataclasses.dataclass(frozen=True)
class Refine:
  """A loss curriculum: from round ``start`` (1-based) on, clients train on ``loss`` instead
  of the objective's. A transport loss draws whole digit shapes with soft strokes, and the
  pixel Gaussian MMD then sharpens the strokes it starts from without breaking the shapes
  (docs/default.md, "Whole digits or sharp strokes"). Both losses must be stateless (their state
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
  """The algorithm's static description (everything that shapes the compiled round).
  ``rule``: the server's method (:mod:`prism_jax.rules`; default PRISM with MADA), bound
  to this algorithm on construction (:meth:`prism_jax.rules.Rule.bind`)."""
  objective: client.Objective
  local: client.LocalConfig = client.LocalConfig()
  num_clients: int = 10
  clients_per_round: int | None = None   # None: all clients every round
  client_chunk: int | None = None        # clients vmapped at once per device (lax.map over
                                         # chunks); None: all of a device's clients at once
  rule: rules.Rule = rules.PrismRule()
  refine: Refine | None = None           # a second loss from a given round on

  def __post_init__(self):
    if self.num_clients < 1:
      raise ValueError(f"num_clients must be >= 1, got {self.num_clients}")
    if not 1 <= self.per_round <= self.num_clients:
      raise ValueError(f"clients_per_round must lie in [1, num_clients={self.num_clients}], "
                       f"got {self.clients_per_round}")
    if self.client_chunk is not None and self.client_chunk < 1:
      raise ValueError(f"client_chunk must be >= 1, got {self.client_chunk}")
    if self.objective.trains != self.rule.trains:
      object.__setattr__(self, "objective",
                         dataclasses.replace(self.objective, trains=self.rule.trains))
    object.__setattr__(self, "rule", self.rule.bind(self))
    if self.refine is not None:
      self.refine.check(self.objective)

  @property
  def method(self) -> str:
    return self.rule.name

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

  @functools.cached_property
  def weight_shapes(self):
    """Shapes of the frozen weights (the structure of scores and masks)."""
    return jax.eval_shape(lambda: generator.init_weights(self.model, 0))

  def send_probs(self, weights=None):
    """Per-layer choice of float32 uploads (bools; None: every layer sends bits)."""
    return self.rule.send_probs(self.weight_shapes if weights is None else weights)

  @functools.cached_property
  def bit_leaves(self) -> list[bool]:
    """Per leaf of the weights, whether it uploads bits (not float32 values)."""
    probs = self.send_probs()
    return ([not p for p in jax.tree.leaves(probs)] if probs else
            [True] * len(jax.tree.leaves(self.weight_shapes)))

  @functools.cached_property
  def num_prob_weights(self) -> int:
    """Weights whose upload is float32 (PRISM-alpha's last layers; all for FedAvg)."""
    return sum(x.size for b, x in zip(self.bit_leaves, jax.tree.leaves(self.weight_shapes))
               if not b)


def init_state(model: generator.ResNetGenerator, seed: int, key: jax.Array,
               score_std: float = 1.0, prism: Prism | None = None) -> ServerState:
  """Round-0 state: scores ~ N(0, score_std^2) over the weights generated from ``seed``;
  with ``prism``, also every client's initial local state (GFMN moving averages, optimizer
  state when carried over) and the rule's (:meth:`prism_jax.rules.Rule.init`: FedPM's
  Beta(1, 1) priors; FedAvg's global parameters are the seed's weights, trained)."""
  weights = jax.eval_shape(lambda: generator.init_weights(model, seed))
  scores = generator.init_scores(key, weights, score_std)
  local, aux = client.LocalState(), ()
  if prism is not None:
    scores, aux = prism.rule.init(model, seed, scores)
    local = jax.vmap(lambda c: client.init_local_state(prism.objective, prism.local, scores,
                                                       c))(jnp.arange(prism.num_clients))
  return ServerState(jnp.asarray(seed, jnp.int32), scores, jnp.zeros((), jnp.int32), local,
                     aux)
