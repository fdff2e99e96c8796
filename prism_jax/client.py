"""PRISM client: local score training, then upload of one sampled binary mask.

fedjax-style split (Algorithm 1, client side):
  * :func:`client_init`  -- start from the broadcast global scores, with the client's own
    optimizer state carried over from its last round (official code) or a fresh one;
  * :func:`client_step`  -- one local iteration: sample a real batch, a mask and ``z``,
    take an optax step on the scores to lower ``loss(psi(real), psi(G(W * m, z)))``;
  * :func:`client_final` -- ``theta_k = sigmoid(s_k)`` (optionally privatized), then
    ``M_k ~ Bernoulli(theta_k)``: the only thing a client sends.
:func:`client_update` chains them with ``lax.scan``; it is a pure function of one client's
data, so the round ``vmap``s it over the client axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from prism_jax import dp, generator, losses, masking
from prism_jax.data import to_float
from prism_jax import features as feats


SAMPLINGS = ("uniform", "epochs")


@dataclasses.dataclass(frozen=True)
class LocalConfig:
  """Client hyper-parameters (defaults: the paper's)."""
  local_steps: int = 100
  batch_size: int = 64
  optimizer_name: str = "adam"  # "adam" (paper) or "sgd"
  learning_rate: float = 0.1
  b1: float = 0.5
  b2: float = 0.999
  estimator: masking.Estimator = "prob"
  dp_noise_std: float = 0.0   # sigma of the Gaussian noise on theta; 0 disables DP
  dp_clip: float = 0.1        # c: noised theta is clipped to [c, 1 - c]
  # "algorithm": the DP step as the paper's algorithm states it (noise on theta, clip).
  # "official": what the official code's DP branch does: its noise is overwritten and the
  # upload is M ~ Bernoulli(clip(score, c, 1 - c)) of the raw *scores*; no privacy at all,
  # only to compare with the paper's DP figures like for like.
  dp_mode: str = "algorithm"
  unroll: int = 1             # lax.scan unroll of the local loop
  # Real batches of the losses that read them: "uniform" with replacement, or "epochs": each
  # round walks through the client's data in a fresh random order, batch after batch, and
  # reshuffles when it has seen every example (a shuffling DataLoader, as the official code
  # builds; its own local step compares against precomputed statistics and reads none).
  sampling: str = "uniform"
  # The official code builds each client's Adam once and keeps it for the whole run (only
  # the scores are overwritten by the global ones each round): moments and step count carry
  # over. False: a fresh optimizer every round.
  carry_optimizer: bool = False

  def __post_init__(self):
    for name in ("local_steps", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.optimizer_name not in ("adam", "sgd"):
      raise ValueError(f"unknown optimizer {self.optimizer_name!r}; choose 'adam' or 'sgd'")
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
    if self.dp_mode not in ("algorithm", "official"):
      raise ValueError(f"dp_mode must be 'algorithm' or 'official', got {self.dp_mode!r}")
    if self.estimator not in masking.ESTIMATORS:
      raise ValueError(f"unknown estimator {self.estimator!r}; choose one of "
                       f"{masking.ESTIMATORS}")
    dp.validate(self.dp_noise_std, self.dp_clip)

  def optimizer(self) -> optax.GradientTransformation:
    if self.optimizer_name == "sgd":
      return optax.sgd(self.learning_rate)
    return optax.adam(self.learning_rate, b1=self.b1, b2=self.b2)


@flax.struct.dataclass
class ClientState:
  scores: Any
  opt_state: Any
  loss_state: Any = ()


@flax.struct.dataclass
class LocalState:
  """What a client keeps between its rounds: the loss state (GFMN moving averages) and,
  with ``LocalConfig.carry_optimizer``, its optimizer state (``()`` when there is none)."""
  loss: Any = ()
  opt: Any = ()


def init_local_state(objective: Objective, cfg: LocalConfig, scores, client=0) -> LocalState:
  """Client ``client``'s state before its first round (``scores`` may be shapes only)."""
  opt = jax.eval_shape(cfg.optimizer().init, scores) if cfg.carry_optimizer else ()
  return LocalState(objective.init_loss_state(client),
                    jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), opt))


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a client minimises: ``loss(psi(real), psi(G(W * mask(s), z)))`` (paper Eq. for
  the local objective). ``features`` is an :class:`~prism_jax.features.Extractor` (or a
  plain ``images -> feats`` function); ``loss`` a :class:`~prism_jax.losses.FeatureLoss`
  (or a plain ``loss(real_feats, fake_feats)``)."""
  model: generator.ResNetGenerator
  features: Any
  loss: Any
  estimator: masking.Estimator = "prob"
  trains: str = "scores"   # "weights": the dense FedAvg baseline trains the weights themselves

  def __post_init__(self):
    if self.trains not in ("scores", "weights"):
      raise ValueError(f"trains must be 'scores' or 'weights', got {self.trains!r}")
    if not isinstance(self.features, feats.Extractor):
      fn = self.features
      object.__setattr__(self, "features", feats.Extractor(
          getattr(fn, "__name__", "custom"), lambda params, x: fn(x)))
    object.__setattr__(self, "loss", losses.as_feature_loss(self.loss))

  @property
  def uses_stats(self) -> bool:
    """Whether the loss compares against precomputed real statistics, not real batches."""
    return self.loss.real == "stats"

  def feature_dim(self) -> int:
    m = self.model
    return self.features.dim((m.image_size, m.image_size, m.channels))

  def init_loss_state(self, client=0):
    return self.loss.init(self.feature_dim(), client)

  def __call__(self, params, weights, real, key: jax.Array, feature_params=None,
               loss_state=(), batch_size: int | None = None, masks=None):
    """Returns ``(loss, new_loss_state)``; ``params`` are the scores over the frozen
    ``weights`` (or, with ``trains="weights"``, the generator's dense weights); ``real`` is an
    image batch, or ``(mean, var)`` of real features when ``uses_stats`` (then
    ``batch_size`` fakes are drawn). ``masks``: binary masks to replay instead of the draw
    from ``key`` (e.g. to compare with another implementation on the same bits)."""
    feature_params = self.features.params if feature_params is None else feature_params
    k_z, k_mask = jax.random.split(key)
    n = batch_size if self.uses_stats else real.shape[0]
    z = jax.random.normal(k_z, (n, self.model.nz), jnp.float32)
    if self.trains == "weights":
      fake = self.model.apply({"params": params}, z)
    else:
      fake = generator.generate(self.model, weights, params, z, k_mask, "sample",
                                self.estimator, masks)
    fake_feats = self.features.apply_fake(feature_params, fake)
    if not self.uses_stats:
      chex.assert_equal_shape([real, fake])
      real = self.features.apply(feature_params, real)
    return self.loss.apply(real, fake_feats, loss_state)


def sample_batch(key: jax.Array, images: jax.Array, count: jax.Array, batch_size: int):
  """Uniform batch (with replacement) from the first ``count`` rows of padded ``images``."""
  idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(count, 1))
  return to_float(images[idx])


def epoch_batch(key: jax.Array, step: jax.Array, images: jax.Array, count: jax.Array,
                batch_size: int):
  """Batch ``step`` of a walk through the first ``count`` rows of padded ``images`` in
  random orders, one per epoch (from ``key`` and the epoch's index): without replacement
  within an epoch, the next epoch reshuffled, like a shuffling ``DataLoader``."""
  n = jnp.maximum(count, 1)
  pos = step * batch_size + jnp.arange(batch_size)
  epoch, within = pos // n, pos % n

  def order(e):   # the valid rows in epoch e's random order, padding last
    u = jax.random.uniform(jax.random.fold_in(key, e), (images.shape[0],))
    return jnp.argsort(jnp.where(jnp.arange(images.shape[0]) < n, u, 2.0))
  first = epoch[0]   # a batch spans at most two epochs when batch_size <= count (beyond,
  # the later epochs of the batch reuse the second order)
  orders = jnp.stack([order(first), order(first + 1)])
  idx = orders[jnp.minimum(epoch - first, 1), within]
  return to_float(images[idx])


def client_init(server_scores, cfg: LocalConfig, local: LocalState = LocalState()
                ) -> ClientState:
  """The broadcast global scores, with the client's carried optimizer state when
  ``cfg.carry_optimizer`` and it has one (a client that never trained starts fresh)."""
  carried = cfg.carry_optimizer and jax.tree.leaves(local.opt)
  opt_state = local.opt if carried else cfg.optimizer().init(server_scores)
  return ClientState(server_scores, opt_state, local.loss)


def client_step(state: ClientState, weights, images, count, key, *, objective: Objective,
                cfg: LocalConfig, feature_params=None, real_stats=None, masks=None,
                epoch=None):
  """One local iteration; returns the new state and the loss before the step (``masks``:
  binary masks replayed instead of drawn, see :class:`Objective`; ``epoch``: ``(key,
  step)`` of the round's walk through the data when ``cfg.sampling="epochs"``)."""
  k_batch, k_loss = jax.random.split(key)
  if objective.uses_stats:
    real = real_stats
  elif cfg.sampling == "epochs":
    real = epoch_batch(*epoch, images, count, cfg.batch_size)
  else:
    real = sample_batch(k_batch, images, count, cfg.batch_size)
  (loss, loss_state), grads = jax.value_and_grad(objective, has_aux=True)(
      state.scores, weights, real, k_loss, feature_params, state.loss_state, cfg.batch_size,
      masks)
  updates, opt_state = cfg.optimizer().update(grads, state.opt_state, state.scores)
  return ClientState(optax.apply_updates(state.scores, updates), opt_state, loss_state), loss


def client_final(state: ClientState, key: jax.Array, cfg: LocalConfig, send_probs=None):
  """The upload: ``M_k ~ Bernoulli(theta_k)`` as a bool PyTree (DP noise on theta first, or
  the official code's clamp of the scores with ``cfg.dp_mode="official"``).

  PRISM-alpha (Algorithm 2): leaves where ``send_probs`` (a PyTree of Python bools) is True
  upload the (privatized) float32 probabilities ``theta_k`` instead of a sampled mask.
  """
  k_dp, k_mask = jax.random.split(key)
  theta = masking.keep_prob(state.scores)
  if cfg.dp_mode == "official":   # no privacy: see LocalConfig.dp_mode
    theta = dp.official_clamp(state.scores, cfg.dp_clip)
  elif cfg.dp_noise_std > 0:
    theta = dp.privatize(k_dp, theta, cfg.dp_noise_std, cfg.dp_clip)
  mask = masking.sample_binary(k_mask, theta)
  if send_probs is None:
    return mask
  return jax.tree.map(lambda p, t, m: t if p else m, send_probs, theta, mask)


EPOCH_TAG = 0x45504F43   # fold_in tag of a client's round key for its epoch orders


def client_update(server_scores, weights, images, count, key, *, objective: Objective,
                  cfg: LocalConfig, feature_params=None, real_stats=None,
                  local: LocalState = LocalState(), send_probs=None, upload=None):
  """Local training of one client (``lax.scan`` over ``cfg.local_steps``).

  Returns ``(upload, local, metrics)``: the mask (or PRISM-alpha mix) to upload, or
  ``upload(local_scores, key)`` when given (a DP mechanism's encoding, e.g.
  :func:`prism_jax.pbm.client_upload`), the
  client's :class:`LocalState` for its next round (GFMN moving averages; optimizer state
  when carried) and its local losses. A dense objective (``trains="weights"``: the FedAvg
  baseline) uploads its float32 weights.
  """
  k_steps, k_final = jax.random.split(key)
  k_epochs = jax.random.fold_in(key, EPOCH_TAG)

  def body(state, xs):
    k, t = xs
    return client_step(state, weights, images, count, k, objective=objective, cfg=cfg,
                       feature_params=feature_params, real_stats=real_stats,
                       epoch=(k_epochs, t))

  steps = (jax.random.split(k_steps, cfg.local_steps), jnp.arange(cfg.local_steps))
  state, losses_ = jax.lax.scan(body, client_init(server_scores, cfg, local), steps,
                                unroll=cfg.unroll)
  metrics = {"loss": jnp.mean(losses_), "loss_first": losses_[0], "loss_last": losses_[-1]}
  local = LocalState(state.loss_state, state.opt_state if cfg.carry_optimizer else ())
  if objective.trains == "weights":
    return state.scores, local, metrics
  if upload is not None:
    return upload(state.scores, k_final), local, metrics
  return client_final(state, k_final, cfg, send_probs), local, metrics
