"""Server rules: one object per federated method, the same small interface for all.

The round step (:mod:`prism_jax.round`), the training loop and the Flower server call a
rule and never ask which method it is:

    scores, aux = rule.init(model, seed, scores)                # round 0's global state
    bcast, theta_hat = rule.aggregate(key, scores, uploads, slot_weights, participants,
                                      rotation)                 # server: uploads -> broadcast
    scores, aux = rule.apply(scores, aux, bcast, round_)        # server and every client
    rule.metrics(bcast, theta_hat, scores)                      # what the round logs
    rule.epsilon(participants_per_round, delta)                 # privacy spent (or None)

``aggregate`` reduces the uploads ``[K, ...]`` over the client axis (slot weight 0: an
empty slot) to the round's broadcast; ``apply`` is the one function that turns a broadcast
into the next global state, run by the server inside the jitted round and by a client on
its downlink message, so both hold the same scores. Rules are frozen dataclasses (static
in the compiled round). A new method is one subclass; :meth:`Rule.bind` lets it see the
algorithm it is part of (to check what it supports and fill defaults).

* :class:`PrismRule`: PRISM's mask average and MADA (Algorithm 1), PRISM-alpha's float
  layers (Algorithm 2), the Gaussian mechanism's accountant when clients add noise.
* :class:`PBMRule`: PRISM whose clients upload the bits of their rotated updates under the
  Poisson binomial mechanism (:mod:`prism_jax.pbm`); the server sees only their sums.
* :class:`FedPMRule`: FedPM's Beta posteriors (:mod:`prism_jax.baselines`).
* :class:`FedAvgRule`: dense FedAvg of the same generator's weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from prism_jax import baselines, communication, dp, generator, masking, pbm, server
from prism_jax.server import ServerConfig

PBM_ROTATION = 0x50424D   # fold_in tag of the round key that gives PBM's shared rotation


def mean_entropy_bits(theta) -> jax.Array:
  """Mean binary entropy of theta, bits per weight: the size of an ideally coded mask."""
  def h(t):
    t = jnp.clip(t, 1e-7, 1 - 1e-7)
    return -(t * jnp.log2(t) + (1 - t) * jnp.log2(1 - t))
  return masking.mean_over_weights(jax.tree.map(h, theta))


@dataclasses.dataclass(frozen=True)
class Rule:
  """The interface, with the defaults of a rule whose clients upload sampled masks."""
  name: ClassVar[str] = "rule"
  trains: ClassVar[str] = "scores"   # what clients train: "scores" or (dense) "weights"
  uploads: ClassVar[str] = "masks"   # "masks" (entropy-coded), "bits" (PBM), "weights"
  noisy: ClassVar[bool] = True       # clients may add the Gaussian noise to theta (dp.py)
  # The privacy mechanism's accountant (anything with ``epsilon(participants, delta)`` and
  # ``describe()``): the Gaussian noise on theta (None: no noise, or bound by :meth:`bind`
  # from ``local.dp_noise_std`` with the default sensitivity), PBM's mechanism.
  privacy: Any = dataclasses.field(default=None, kw_only=True)

  @property
  def sends_masks(self) -> bool:
    """Whether clients upload bits (masks or PBM's bits) rather than float32 weights."""
    return self.uploads != "weights"

  @property
  def codable(self) -> bool:
    """Whether the uploads are masks that entropy coding against theta shrinks."""
    return self.uploads == "masks"

  def bind(self, prism) -> "Rule":
    """This rule as part of ``prism`` (a :class:`prism_jax.algorithm.Prism`): raises on
    what it does not support, fills defaults that depend on the algorithm."""
    sigma = prism.local.dp_noise_std
    if not sigma:
      return dataclasses.replace(self, privacy=None)
    if not self.noisy:
      raise ValueError(f"DP noise is defined on mask probabilities; method {self.name!r} "
                       f"uploads {self.uploads} and has no DP mechanism here")
    if self.privacy is None or self.privacy.noise_std != sigma:
      n = masking.num_weights(prism.weight_shapes)
      return dataclasses.replace(self, privacy=dp.Gaussian(sigma, n))
    return self

  def init(self, model, seed, scores):
    """Round 0's global parameters and auxiliary state from the initial ``scores``."""
    return scores, ()

  def send_probs(self, weights):
    """Per-layer choice of float32 uploads (a PyTree of bools); None: every layer bits."""
    return None

  def rotation(self, round_key: jax.Array):
    """What a round's clients share besides the scores, as key data (PBM's rotation)."""
    return None

  def shared(self, rotation, scores):
    """The clients' operand of :meth:`rotation` (``()`` when there is none)."""
    return ()

  def upload(self, global_scores, shared):
    """``(local_scores, key) -> upload`` replacing the sampled mask, or None."""
    return None

  def bits_up(self, num_weights: int, num_prob_weights: int) -> int:
    """Bits a client uploads per round before coding."""
    return communication.upload_bits(num_weights, num_prob_weights)

  def aggregate(self, key, scores, uploads, slot_weights, participants: int, rotation=None):
    """``(broadcast, theta_hat)``: the round's broadcast from the uploads ``[K, ...]`` and
    the aggregated keep-probabilities it implies (None where there are none)."""
    raise NotImplementedError

  def apply(self, scores, aux, bcast, round_):
    """The next ``(scores, aux)`` from a round's broadcast."""
    raise NotImplementedError

  def metrics(self, bcast, theta_hat, scores) -> dict:
    """The server's metrics of a round (``scores``: the new global scores)."""
    return dict(mada_lambda=bcast.lam, density=masking.mean_over_weights(theta_hat),
                mask_entropy_bits=mean_entropy_bits(masking.keep_prob(scores)))

  def epsilon(self, participants: list[int], delta: float) -> float | None:
    """``epsilon`` at ``delta`` after rounds that aggregated ``participants[i]`` clients
    each; None without a privacy mechanism."""
    return None if self.privacy is None else self.privacy.epsilon(participants, delta)


def _mada_lambda(cfg: ServerConfig, key, prev, new):
  if not cfg.mada:
    return jnp.ones((), jnp.float32)
  return server.mada_lambda(key, prev, new, server.lambda_copies(cfg, prev))


@dataclasses.dataclass(frozen=True)
class PrismRule(Rule):
  """PRISM: ``theta_hat = mean_k smooth(M_k)``, new scores ``logit(theta_hat)``, smoothed by
  MADA (:mod:`prism_jax.server`). ``alpha``: PRISM-alpha's last fraction of layers upload
  float32 probabilities."""
  name: ClassVar[str] = "prism"
  server: ServerConfig = ServerConfig()
  alpha: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

  def send_probs(self, weights):
    return generator.prob_layers(weights, self.alpha) if self.alpha > 0 else None

  def aggregate(self, key, scores, uploads, slot_weights, participants, rotation=None):
    counts, n = server.tally(uploads, slot_weights)
    theta_hat = server.probs_from_counts(counts, n, self.server.smoothing)
    lam = _mada_lambda(self.server, key, scores, server.scores_from_probs(theta_hat))
    return server.make_broadcast(counts, participants, lam, self.server.smoothing), theta_hat

  def apply(self, scores, aux, bcast, round_):
    return server.rebuild(scores, bcast, self.server), aux


@dataclasses.dataclass(frozen=True)
class PBMRule(Rule):
  """PRISM under the Poisson binomial mechanism: each client uploads the bits of its
  rotated update ``theta_k - theta``; the server sees their sums (secure aggregation), the
  unbiased mean update gives the new scores, smoothed by MADA."""
  name: ClassVar[str] = "prism"
  uploads: ClassVar[str] = "bits"
  noisy: ClassVar[bool] = False
  mechanism: pbm.Mechanism = None
  server: ServerConfig = ServerConfig()

  def bind(self, prism) -> "PBMRule":
    if self.mechanism is None:
      raise ValueError("PBMRule needs its mechanism (pbm.Mechanism)")
    if prism.local.dp_noise_std or prism.local.dp_mode != "algorithm":
      raise ValueError("the PBM mechanism applies to PRISM's masks only: not with the "
                       "Gaussian noise on theta (local.dp_noise_std) or local.dp_mode")
    if prism.per_round < 2:
      raise ValueError(f"PBM sums at least 2 participants per round, got {prism.per_round}")
    return dataclasses.replace(self, privacy=self.mechanism)   # its accountant

  def rotation(self, round_key):
    return jax.random.key_data(jax.random.fold_in(round_key, PBM_ROTATION))

  def shared(self, rotation, scores):
    return pbm.rotation(jax.random.wrap_key_data(rotation), masking.num_weights(scores))

  def upload(self, global_scores, shared):
    return lambda local_scores, k: pbm.client_upload(k, local_scores, global_scores, shared,
                                                     self.mechanism)

  def bits_up(self, num_weights, num_prob_weights):
    return pbm.padded_size(num_weights)   # one bit per rotated (padded) coordinate

  def _new(self, scores, counts, participants, rotation):
    return pbm.new_scores(scores, counts, participants, self.shared(rotation, scores),
                          self.mechanism, self.server.smoothing)

  def aggregate(self, key, scores, uploads, slot_weights, participants, rotation=None):
    counts, _ = server.tally(uploads, slot_weights)   # the sums: all the server sees
    new = self._new(scores, counts, participants, rotation)
    lam = _mada_lambda(self.server, key, scores, new)
    return server.Broadcast(counts, participants, lam, rotation), masking.keep_prob(new)

  def apply(self, scores, aux, bcast, round_):
    new = self._new(scores, bcast.counts, bcast.participants, bcast.rotation)
    return (server.mix(scores, new, bcast.lam) if self.server.mada else new), aux


@dataclasses.dataclass(frozen=True)
class FedPMRule(Rule):
  """FedPM: Beta posteriors of the keep-probabilities updated by the uploaded masks, reset
  every ``reset_every`` rounds (None: ``ceil(1 / q)`` at participation ``q``); no MADA."""
  name: ClassVar[str] = "fedpm"
  reset_every: int | None = None
  smoothing: float = 0.01

  def __post_init__(self):
    if self.reset_every is not None and self.reset_every < 1:
      raise ValueError(f"fedpm_reset must be >= 1, got {self.reset_every}")

  def bind(self, prism) -> "FedPMRule":
    return dataclasses.replace(super().bind(prism), reset_every=self.reset_every or
                               baselines.fedpm_reset_every(prism.num_clients, prism.per_round))

  def init(self, model, seed, scores):
    return scores, baselines.beta_init(scores)

  def aggregate(self, key, scores, uploads, slot_weights, participants, rotation=None):
    counts, _ = server.tally(uploads, slot_weights)
    return server.make_broadcast(counts, participants, jnp.ones((), jnp.float32),
                                 self.smoothing), None

  def apply(self, scores, aux, bcast, round_):
    theta, aux = baselines.fedpm_rebuild(aux, bcast.counts, bcast.participants, round_,
                                         self.reset_every, self.smoothing)
    return server.scores_from_probs(theta), aux

  def metrics(self, bcast, theta_hat, scores):
    return super().metrics(bcast, masking.keep_prob(scores), scores)


@dataclasses.dataclass(frozen=True)
class FedAvgRule(Rule):
  """Dense FedAvg: clients train the generator's weights (initialised from the same seed)
  and upload them as float32; the new weights are their mean, which is also what is
  broadcast."""
  name: ClassVar[str] = "fedavg"
  trains: ClassVar[str] = "weights"
  uploads: ClassVar[str] = "weights"
  noisy: ClassVar[bool] = False

  def init(self, model, seed, scores):
    return generator.init_weights(model, seed), ()

  def send_probs(self, weights):
    return jax.tree.map(lambda _: True, weights)

  def aggregate(self, key, scores, uploads, slot_weights, participants, rotation=None):
    return baselines.fedavg_update(uploads, slot_weights), None

  def apply(self, scores, aux, bcast, round_):
    return bcast, aux

  def metrics(self, bcast, theta_hat, scores):
    return {}


RULES: dict[str, Any] = {"prism": PrismRule, "fedpm": FedPMRule, "fedavg": FedAvgRule}
