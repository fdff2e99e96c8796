"""From a config to the objects it describes: the algorithm (:class:`~prism_jax.algorithm.Prism`
with its rule), validated, before any data is loaded or any file written.

A config is an ``ml_collections.ConfigDict`` (``experiments/configs/``). :func:`build` is
what the training loop, the Flower deployment and the benchmarks use; :func:`check_ranges`
refuses values outside their meaningful range with the range in the message.
"""
from __future__ import annotations

import math
import os

import jax

from prism_jax import client, data, dp, features, generator, losses, masking, pbm, rules, server
from prism_jax.algorithm import Prism, Refine

# Dotted config field -> (low, high, what): values outside [low, high] are refused; "open"
# ends exclude the bound. A value beyond these is a typo or a unit error, not an experiment.
RANGES = {
    "rounds": (1, 1_000_000, "closed"),
    "num_clients": (1, 1_000_000, "closed"),
    "nz": (1, 4096, "closed"),
    "ngf": (1, 1024, "closed"),
    "score_std": (0.0, 100.0, "open low"),
    "smoothing": (0.0, 0.5, "open"),
    "prism_alpha": (0.0, 1.0, "closed"),
    "alpha": (0.0, 1e6, "open low"),   # Dirichlet concentration
    "num_samples": (1, 10_000, "closed"),
    "local.learning_rate": (0.0, 10.0, "open low"),
    "local.local_steps": (1, 1_000_000, "closed"),
    "local.batch_size": (1, 65_536, "closed"),
    "local.b1": (0.0, 1.0, "open high"),
    "local.b2": (0.0, 1.0, "open high"),
    "local.dp_noise_std": (0.0, 1e6, "closed"),
    "local.dp_clip": (0.0, 0.5, "open high"),
}


def _get(config, path: str):
  node = config
  for key in path.split("."):
    node = node.get(key) if hasattr(node, "get") else None
    if node is None:
      return None
  return node


# config.precision -> the matmuls' input dtype (generator.matmul).
PRECISIONS = {"float32": None, "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_ranges(config) -> None:
  """Raises ``ValueError`` naming the field and its valid range for the first value of
  :data:`RANGES` outside it (unset fields are skipped)."""
  if config.get("precision", "float32") not in PRECISIONS:
    raise ValueError(f"config.precision={config.precision!r}: choose one of "
                     f"{tuple(PRECISIONS)}")
  for path, (low, high, kind) in RANGES.items():
    value = _get(config, path)
    if value is None or isinstance(value, bool):
      continue
    below = value <= low if kind in ("open low", "open") else value < low
    above = value >= high if kind in ("open high", "open") else value > high
    if below or above or (isinstance(value, float) and not math.isfinite(value)):
      lo = "(" if kind in ("open low", "open") else "["
      hi = ")" if kind in ("open high", "open") else "]"
      raise ValueError(f"config.{path}={value!r} is outside its valid range "
                       f"{lo}{low:g}, {high:g}{hi}")


def image_channels(config) -> int:
  """The dataset's channel count; a config that sets another one is an error."""
  channels = data.info(config.dataset).channels
  if config.get("channels") not in (None, channels):
    raise ValueError(f"config.channels={config.channels} but dataset {config.dataset!r} has "
                     f"{channels} channel(s); leave channels unset (None)")
  return channels


def dp_noise_std(config, num_weights: int) -> float:
  """The configured noise std, or the one calibrated to ``config.dp.epsilon`` over
  ``config.rounds`` rounds (:func:`prism_jax.dp.calibrate_noise`)."""
  cfg = config.get("dp") or {}
  delta, eps = cfg.get("delta", 1e-5), cfg.get("epsilon")
  dp.validate_target(eps if eps is not None else 1.0, delta)
  if eps is None or cfg.get("mechanism", "gaussian") == "pbm":
    return config.local.dp_noise_std
  if config.local.dp_noise_std:
    raise ValueError("set either config.dp.epsilon (noise calibrated) or "
                     "config.local.dp_noise_std, not both")
  return dp.calibrate_noise(eps, delta, config.rounds, num_weights, cfg.get("sensitivity"),
                            cfg.get("accountant", "rdp"))


DP_MECHANISMS = ("gaussian", "pbm")


def pbm_mechanism(config, num_weights: int):
  """The PBM parameters of a config (``dp.mechanism="pbm"``), ``b`` calibrated to
  ``dp.epsilon`` over ``config.rounds`` unless given; None for the other mechanisms."""
  cfg = config.get("dp") or {}
  kind = cfg.get("mechanism", "gaussian")
  if kind not in DP_MECHANISMS:
    raise ValueError(f"unknown dp.mechanism {kind!r}; choose one of {DP_MECHANISMS}")
  if kind != "pbm":
    return None
  if config.local.dp_noise_std:
    raise ValueError("dp.mechanism='pbm' replaces the Gaussian noise on theta: leave "
                     "local.dp_noise_std at 0")
  participants = config.get("clients_per_round") or config.num_clients
  clip_norm, coord_clip = pbm.clips(cfg.get("clip_rms", 0.05), num_weights,
                                    cfg.get("spread", 3.0))
  b = cfg.get("b")
  if b is None:
    if cfg.get("epsilon") is None:
      raise ValueError("dp.mechanism='pbm' needs dp.epsilon (b calibrated to it) or dp.b")
    b = pbm.calibrate(cfg["epsilon"], cfg.get("delta", 1e-5), config.rounds, participants,
                      clip_norm, coord_clip)
  elif cfg.get("epsilon") is not None:
    raise ValueError("set either dp.epsilon (b calibrated) or dp.b, not both")
  pbm.validate(b, clip_norm, coord_clip, participants)
  return pbm.Mechanism(b, clip_norm, coord_clip)


# config.method -> its rule from (config, privacy accountant or None, ServerConfig).
RULES = {
    "prism": lambda c, privacy, s: rules.PrismRule(privacy=privacy, server=s,
                                                   alpha=c.get("prism_alpha", 0.0)),
    "fedpm": lambda c, privacy, s: rules.FedPMRule(privacy=privacy,
                                                   reset_every=c.get("fedpm_reset"),
                                                   smoothing=c.smoothing),
    "fedavg": lambda c, privacy, s: rules.FedAvgRule(),
}


def rule(config, num_weights: int) -> rules.Rule:
  """The server's rule that ``config.method`` names (:data:`RULES`; PRISM under
  ``dp.mechanism="pbm"``: :class:`~prism_jax.rules.PBMRule`), with the accountant of its
  privacy mechanism."""
  method, cfg = config.get("method", "prism"), config.get("dp") or {}
  if method not in RULES:
    raise ValueError(f"unknown method {method!r}; choose one of {tuple(RULES)}")
  server_cfg = server.ServerConfig(config.mada, config.smoothing,
                                   config.get("lambda_counts", "weights"))
  mechanism = pbm_mechanism(config, num_weights)
  if mechanism is not None:
    if method != "prism":
      raise ValueError(f"the PBM mechanism applies to PRISM's masks only, not to {method!r}")
    return rules.PBMRule(mechanism=mechanism, server=server_cfg)
  if cfg.get("epsilon") is not None and not rules.RULES[method].noisy:
    raise ValueError(f"config.dp.epsilon is set but method {method!r} has no DP mechanism "
                     "here")
  if config.get("prism_alpha") and method != "prism":
    raise ValueError(f"PRISM-alpha (alpha={config.prism_alpha}) applies to method 'prism' "
                     f"only, not {method!r}")
  sigma = dp_noise_std(config, num_weights)
  privacy = dp.Gaussian(sigma, num_weights, cfg.get("sensitivity"),
                        cfg.get("accountant", "rdp")) if sigma else None
  return RULES[method](config, privacy, server_cfg)


def build(config) -> Prism:
  """The algorithm a config describes, validated before any data is loaded or written."""
  check_ranges(config)
  dtype = PRECISIONS[config.get("precision", "float32")]
  model = generator.ResNetGenerator(config.image_size, image_channels(config), config.nz,
                                    config.ngf, input_fan=config.get("input_fan", "torch"),
                                    matmul_dtype=dtype,
                                    conv_impl=generator.conv_auto_impl(clients_per_device(config)))
  fkw = dict(config.get("features_kwargs") or {})
  if config.features in ("vgg19", "cnn"):
    fkw.setdefault("image_size", config.image_size)
  if config.features == "vgg19" and dtype:
    fkw.setdefault("matmul_dtype", dtype)
  if config.features == "cnn":   # trained on the dataset's held-out split, cached
    fkw.update(dataset=config.dataset, cache_dir=cache_dir(config),
               data_dir=config.get("data_dir"))
  extractor = features.get_extractor(config.features, **fkw)
  objective = client.Objective(model, extractor,
                               losses.get_loss(config.loss.name,
                                               **dict(config.loss.get("kwargs", {}))),
                               config.local.estimator)
  ev = config.get("eval") or {}
  if ev.get("every") and ev.get("num_samples", 1000) <= 5:
    raise ValueError(f"eval.num_samples must exceed the k=5 neighbours of precision/recall, "
                     f"got {ev.get('num_samples')}")
  n = masking.num_weights(jax.eval_shape(lambda: generator.init_weights(model, 0)))
  the_rule = rule(config, n)
  sigma = the_rule.privacy.noise_std if the_rule.privacy else config.local.dp_noise_std
  local = client.LocalConfig(**{**config.local, "dp_noise_std": sigma})
  if local.dp_mode == "official" and local.dp_noise_std:
    raise ValueError("local.dp_mode='official' reproduces the official code's DP branch, which "
                     "discards its noise: it has no privacy guarantee, so dp.epsilon / "
                     "local.dp_noise_std cannot be set with it")
  return Prism(objective, local, config.num_clients, config.get("clients_per_round"),
               config.get("client_chunk"), the_rule, refinement(config))


def clients_per_device(config) -> int:
  """How many clients a device's round vmaps at once (the generator's kernels are batched
  over them): the round's clients spread over the devices, at most ``client_chunk``."""
  per_round = config.get("clients_per_round") or config.num_clients
  return min(config.get("client_chunk") or per_round, -(-per_round // jax.device_count()))


def refinement(config) -> Refine | None:
  """``config.refine``: from round ``start`` on, clients train on the loss ``name`` with
  ``kwargs``, for ``local_steps`` local steps when set (None: one loss throughout)."""
  rc = config.get("refine") or {}
  if rc.get("start") is None:
    return None
  return Refine(rc["start"], losses.get_loss(rc.get("name", "gaussian_mmd"),
                                             **dict(rc.get("kwargs") or {})),
                rc.get("reset_optimizer", True), rc.get("local_steps"))


def cache_dir(config) -> str:
  return os.path.expanduser(config.get("cache_dir") or os.environ.get(
      "PRISM_JAX_CACHE", "~/.cache/prism_jax"))


def run_keys(train_seed: int):
  """``(k_init, k_rounds, k_eval, k_final)``: every key of a run, from its train seed (the
  simulator and a Flower deployment must derive them identically)."""
  return tuple(jax.random.split(jax.random.key(train_seed), 4))
