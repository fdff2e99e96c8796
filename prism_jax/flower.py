"""Deployment with Flower (``flwr``): the library's client update and server step on separate
processes or machines, exchanging entropy-coded masks.

* :class:`Node` (run by :func:`client_app` in the ClientApp process, or by a node's
  long-lived worker, :mod:`prism_jax.flower_node`) brings the node's copy of the
  global scores up to date (the coded broadcasts it missed, applied in order with
  :func:`prism_jax.round.apply_broadcast`, or the full float32 scores), runs the jitted
  :func:`prism_jax.client.client_update` on the node's own data (``load_data(client_id)``)
  and replies with its mask coded against the global theta (:mod:`prism_jax.coding`;
  PRISM-alpha's probability layers as float32 arrays) and a digest of the scores it rebuilt.
  The global scores, FedPM's posteriors and the local state (GFMN moving averages, carried
  optimizer) stay on the node, in the Flower ``Context``.
* :func:`server_app`: a ``ServerApp`` that runs the rounds: picks clients exactly as the
  simulator does, sends each one what it missed (:class:`prism_jax.downlink.Ledger`),
  decodes the replies, checks every client's digest against its own scores, applies
  :func:`prism_jax.round.server_step` (aggregation + MADA, or FedPM) and codes the round's
  broadcast (:mod:`prism_jax.downlink`), with the privacy accountant's epsilon logged per
  round. A client that cannot apply a broadcast (it does not decode, or is not the round it
  needs) asks for the full scores, which the server then sends. Clients that fail, time
  out or send invalid uploads are left out of their round with the reason logged
  (:class:`ServerOptions`); the server checkpoints every round and resumes.

Keys are derived as in :func:`prism_jax.train.train` (``train_seed`` -> round key -> client
key by client id), so for the same config, seeds and data a Flower run reproduces the
jitted simulation: exactly for short local training; over many local steps the node's
single-client program and the simulator's vmapped one round differently, and a sampled
mask bit whose uniform draw sits at theta can flip, so the runs drift apart (same
distribution, not the same bits). A node's client id is its ``partition-id`` node config.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import (checkpoint, client, coding, downlink, dp, flower_node, generator,
                       masking, pbm)
from prism_jax import round as rnd
from prism_jax.flower_node import (CONFIG, DOWN, GLOBAL, LOCAL_STATE, METRICS, PROBS, SCORES,
                                   UPLOAD)
_NODE_CACHE: dict = {}   # (deployment fingerprint, client id) -> compiled update, data


@dataclasses.dataclass(frozen=True)
class Deployment:
  """What server and clients agree on: the algorithm and the seeds (all from one config)."""
  prism: rnd.Prism
  seed: int = 0            # the frozen weights' seed
  train_seed: int = 0      # the round and client keys
  rounds: int = 10
  score_std: float = 1.0
  coding_floor: float = 1e-3
  dp_delta: float = 1e-5

  def __post_init__(self):
    if not self.prism.sends_masks:
      raise ValueError("the Flower adapter exchanges masks; method 'fedavg' is not supported")

  @classmethod
  def from_config(cls, config) -> "Deployment":
    from prism_jax import train
    return cls(train.build(config), config.seed, config.train_seed, config.rounds,
               config.score_std, (config.get("coding") or {}).get("floor", 1e-3),
               (config.get("dp") or {}).get("delta", 1e-5))

  @functools.cached_property
  def like(self):
    """Shapes of the masked weights (structure of scores and masks)."""
    return jax.eval_shape(lambda: generator.init_weights(self.prism.model, 0))

  @functools.cached_property
  def num_weights(self) -> int:
    return masking.num_weights(self.like)

  @functools.cached_property
  def bit_leaves(self) -> list[bool]:
    probs = self.prism.send_probs(self.like)
    return [not p for p in jax.tree.leaves(probs)] if probs else [True] * len(
        jax.tree.leaves(self.like))

  @functools.cached_property
  def fingerprint(self) -> str:
    """Identifies the deployment across processes (the app may be re-created per message)."""
    p = self.prism
    refine = p.refine and (p.refine.start, p.refine.reset_optimizer, p.refine.local_steps)
    desc = (p.model, p.local, p.server, p.method, p.alpha, p.num_clients, p.per_round,
            p.objective.features.name, p.objective.uses_stats, p.objective.estimator, refine,
            self.seed)
    return hashlib.sha1(repr(desc).encode()).hexdigest()

  def keys(self):
    """``(k_init, k_rounds)`` of :func:`prism_jax.train.run_keys`, as a training run uses."""
    from prism_jax import train
    k_init, k_rounds, _, _ = train.run_keys(self.train_seed)
    return k_init, k_rounds

  def round_plan(self, r: int):
    """Round ``r``'s ``(client ids, client key, server key, PBM rotation)``, as the
    simulator derives them."""
    p, k_round = self.prism, jax.random.fold_in(self.keys()[1], r)
    k_select, k_clients, k_server = jax.random.split(k_round, 3)
    idx, _ = rnd.select_clients(k_select, p.num_clients, p.per_round, p.per_round)
    return [int(i) for i in np.asarray(idx)], k_clients, k_server, rnd.round_rotation(p, k_round)

  @functools.cached_property
  def initial(self) -> rnd.ServerState:
    """Round 0's global state, which every side derives from the shared seeds."""
    state = rnd.init_state(self.prism.model, self.seed, self.keys()[0], self.score_std,
                           self.prism)
    return state.replace(local_states=client.LocalState())   # local states live on the nodes

  @functools.cached_property
  def apply(self):
    """The jitted :func:`prism_jax.round.apply_broadcast` (the server's own rule)."""
    return jax.jit(functools.partial(rnd.apply_broadcast, self.prism),
                   compiler_options=rnd.compiler_options())


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


def _arrays(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _tree(arrays, like):
  return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(a) for a in arrays])


def split_data(data: rnd.ClientData, client_id: int) -> tuple:
  """``load_data`` for a node that takes its share of a simulator ``ClientData``."""
  n = int(data.counts[client_id])
  stats = jax.tree.map(lambda x: x[client_id], data.real_stats)
  return np.asarray(data.images[client_id, :n]), stats


class Node:
  """A client's side of a deployed round on plain data (dicts, lists, numpy arrays; no
  Flower types), so that it runs in the ClientApp process or in a long-lived worker that
  keeps the data and the compiled update between rounds (:mod:`prism_jax.flower_node`).
  ``load_data(client_id) -> (images [N, H, W, C] uint8, real_stats)`` gives a node its own
  data (``real_stats`` ``()`` unless the loss uses statistics); the persistent XLA
  ``compilation_cache`` (a directory; None: off) spares a new process most compilation."""

  def __init__(self, dep: Deployment, load_data: Callable[[int], tuple],
               compilation_cache: str | None = "~/.cache/prism_jax/xla"):
    self.dep, self.load_data, self.compilation_cache = dep, load_data, compilation_cache

  def prepare(self, cid: int) -> dict:
    """Client ``cid``'s data, frozen weights and compiled updates (:meth:`update`), loaded
    once per process and deployment (Flower may rebuild the app for every message)."""
    cache = _NODE_CACHE.setdefault((self.dep.fingerprint, cid), {})
    if not cache:
      if self.compilation_cache and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(self.compilation_cache))
      images, real_stats = self.load_data(cid)
      cache.update(data=(jnp.asarray(images), real_stats),
                   weights=generator.init_weights(self.dep.prism.model, self.dep.seed),
                   update={})
    return cache

  def update(self, cid: int, round_: int) -> Callable:
    """Client ``cid``'s compiled update for round ``round_`` (one per curriculum phase)."""
    prism, updates = self.dep.prism, self.prepare(cid)["update"]
    refining = prism.refining(round_)
    if refining not in updates:
      updates[refining] = jax.jit(rnd.client_update_fn(prism, round_),
                                  compiler_options=rnd.compiler_options())
    return updates[refining]

  def train(self, cid: int, content: dict, state: dict) -> tuple[dict, dict]:
    """One round of client ``cid``: ``content`` is the server's message (``config``;
    ``downlink``: the broadcasts it missed; or ``scores``: the full float32 scores),
    ``state`` what the node kept from its last round (``global``, ``round``,
    ``local_state``). Returns ``(reply, new state)``; the reply is the coded upload, its
    digests and metrics, or ``need_full`` when the broadcasts cannot be applied."""
    dep, prism, cache = self.dep, self.dep.prism, self.prepare(cid)
    images, real_stats = cache["data"]
    cfg, init, state = content[CONFIG], dep.initial, dict(state)
    if content.get(SCORES) is not None:   # the full float32 scores (and FedPM's posteriors)
      scores, aux = _tree(content[SCORES], (init.scores, init.aux))
      held = int(cfg["round"])
    elif state.get(GLOBAL) is not None:   # this node's copy from its last round
      scores, aux = _tree(state[GLOBAL], (init.scores, init.aux))
      held = int(state["round"])
    else:                                 # a new node: round 0 from the seeds
      scores, aux, held = init.scores, init.aux, 0
    down = content[DOWN]
    try:
      scores, aux, held = sync(dep, scores, aux, held, list(down["payloads"]),
                               int(down["first"]))
    except downlink.DownlinkError as e:
      return {CONFIG: {"need_full": True, "error": str(e), "client_id": cid}}, state
    if held != int(cfg["round"]):
      return {CONFIG: {"need_full": True, "client_id": cid,
                       "error": f"holds round {held}, round {cfg['round']} starts"}}, state
    state.update({GLOBAL: _arrays((scores, aux)), "round": held})
    k_clients = jax.random.wrap_key_data(np.asarray(cfg["client_key"], np.uint32))
    local = client.init_local_state(prism.objective, prism.local, dep.like, cid)
    restart = prism.refine is not None and prism.refine.restarts(state.get("trained", 0),
                                                                    held + 1)
    if state.get(LOCAL_STATE) is not None and not restart:
      local = _tree(state[LOCAL_STATE], local)
    rot = ()
    if prism.pbm is not None:   # the round's shared rotation
      rot = rnd.pbm_rotation(jnp.asarray(np.asarray(cfg["rotation"], np.uint32)), scores)
    t0 = time.perf_counter()
    upload, local, metrics = self.update(cid, held + 1)(
        scores, cache["weights"], images, jnp.int32(len(images)),
        jax.random.fold_in(k_clients, cid), feature_params=prism.objective.features.params,
        real_stats=real_stats, local=local, rot=rot)
    jax.block_until_ready(upload)
    seconds = time.perf_counter() - t0
    if jax.tree.leaves(local):
      state.update({LOCAL_STATE: _arrays(local), "trained": held + 1})
    if prism.pbm is not None:   # one bit per rotated coordinate, incompressible: packed
      payload, probs, digest_ = np.packbits(np.asarray(upload)).tobytes(), [], ""
    else:
      leaves = jax.tree.leaves(upload)
      masks = [m for m, b in zip(leaves, dep.bit_leaves) if b]
      probs = [np.asarray(p, np.float32) for p, b in zip(leaves, dep.bit_leaves) if not b]
      theta = [jax.nn.sigmoid(s) for s, b in zip(jax.tree.leaves(scores), dep.bit_leaves)
               if b]
      payload, digest_ = coding.encode(masks, theta, dep.coding_floor), mask_digest(masks)
    return {UPLOAD: {"mask": payload, "client_id": cid, "round": held,
                     "digest": digest(scores), "mask_digest": digest_},
            PROBS: probs,
            METRICS: {**{k: float(v) for k, v in metrics.items()}, "client_seconds": seconds,
                      "coded_bits": 8 * len(payload)}}, state


def client_app(dep: Deployment, load_data: Callable[[int], tuple],
               compilation_cache: str | None = "~/.cache/prism_jax/xla"):
  """The ``ClientApp`` running :class:`Node` in its own process (see
  :func:`prism_jax.flower_node.worker_client_app` for a node that stays warm)."""
  return flower_node.client_app(Node(dep, load_data, compilation_cache).train)


class UploadError(ValueError):
  """An upload the server refuses (it is not aggregated; the round goes on without it)."""


def mask_digest(leaves) -> str:
  """A short hash of a client's mask bits: the server checks its decoding against it."""
  bits = np.concatenate([np.asarray(m, bool).ravel() for m in leaves])
  return hashlib.sha256(np.packbits(bits).tobytes()).hexdigest()[:16]


def _decode(dep: Deployment, reply, theta_bits, version: int) -> tuple[Any, dict, str]:
  """``(upload, metrics, scores digest)`` of a client's reply; raises :class:`UploadError`
  naming what is wrong (a payload that does not decode, the wrong length, another round)."""
  try:
    up, metrics = reply.content[UPLOAD], dict(reply.content[METRICS])
    payload, claimed = up["mask"], int(up["round"])
  except (KeyError, TypeError, ValueError) as e:
    raise UploadError(f"malformed reply ({type(e).__name__}: {e})") from e
  if claimed != version:
    raise UploadError(f"upload claims round {claimed}, this is round {version}")
  if dep.prism.pbm is not None:
    d = pbm.padded_size(dep.num_weights)
    if len(payload) != -(-d // 8):
      raise UploadError(f"PBM upload of {len(payload)} bytes, expected {-(-d // 8)}")
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), count=d).astype(bool)
    return jnp.asarray(bits), metrics, up["digest"]
  try:
    masks = coding.decode(payload, theta_bits, dep.coding_floor)
  except Exception as e:   # constriction / numpy raise several types on corrupt input
    raise UploadError(f"mask payload does not decode ({type(e).__name__}: {e})") from e
  if mask_digest(masks) != up.get("mask_digest"):
    raise UploadError("decoded mask does not match its digest (corrupt or wrong length)")
  probs = reply.content[PROBS].to_numpy_ndarrays() if PROBS in reply.content else []
  like = [x for x, b in zip(jax.tree.leaves(dep.like), dep.bit_leaves) if not b]
  if [p.shape for p in probs] != [x.shape for x in like]:
    raise UploadError(f"probability layers of shapes {[p.shape for p in probs]}, expected "
                      f"{[x.shape for x in like]}")
  masks, probs = iter(masks), iter(probs)
  leaves = [next(masks) if b else jnp.asarray(next(probs)) for b in dep.bit_leaves]
  return jax.tree.unflatten(jax.tree.structure(dep.like), leaves), metrics, up["digest"]


@dataclasses.dataclass(frozen=True)
class ServerOptions:
  """How the ServerApp copes with a real network.

  ``round_timeout``: seconds to wait for a round's replies (None: until every node replies
  or Flower reports it unavailable, about 60 s after its last heartbeat). ``min_uploads``:
  a round is aggregated only from at least this many valid uploads; below it the missing
  clients are asked again (``retries`` times), then the round is skipped (the global model
  stays as it is). ``checkpoint_dir``: the server state is checkpointed there (orbax) after
  every round; with ``resume`` a restarted server continues from the last checkpoint
  (without it, an existing checkpoint stops the server rather than being overwritten)."""
  round_timeout: float | None = None
  min_uploads: int = 1
  retries: int = 1
  checkpoint_dir: str | None = None
  resume: bool = False

  def __post_init__(self):
    if self.min_uploads < 1:
      raise ValueError(f"min_uploads must be >= 1, got {self.min_uploads}")
    if self.retries < 0:
      raise ValueError(f"retries must be >= 0, got {self.retries}")
    if self.round_timeout is not None and not self.round_timeout > 0:
      raise ValueError(f"round_timeout must be > 0 seconds, got {self.round_timeout}")


def server_app(dep: Deployment, out_path: str | None = None,
               on_round: Callable[[int, dict], None] | None = None,
               options: ServerOptions = ServerOptions()):
  """The ``ServerApp``: ``dep.rounds`` rounds over the connected nodes; the final global
  scores are written to ``out_path`` (``.npz``, leaves in PyTree order) and each round's
  metrics passed to ``on_round(round, metrics)`` and written to ``out_path + '.jsonl'``.

  A round aggregates the valid uploads that arrived (:class:`ServerOptions`): a client that
  fails, times out or sends an upload that does not decode, has the wrong length or claims
  another round is left out with its reason logged (``dropped`` / ``rejected``), the mean
  is over the ``participants`` that remain, and bits and the privacy accountant count only
  them."""
  from flwr.serverapp import ServerApp

  if dep.prism.per_round < options.min_uploads:
    raise ValueError(f"min_uploads {options.min_uploads} exceeds the {dep.prism.per_round} "
                     "clients per round")
  app = ServerApp()

  @app.main()
  def main(grid, context) -> None:
    resume = options.resume or str(context.run_config.get("resume", "")).lower() == "true"
    server = _Server(dep, dataclasses.replace(options, resume=resume), out_path)
    nodes = _client_nodes(grid, dep.prism.num_clients)
    while server.next_round < dep.rounds:
      m = server.run_round(grid, nodes)
      if on_round is not None:
        on_round(m["round"], m)
    if out_path:
      np.savez(out_path, *_arrays(server.state.scores))

  return app


class _Server:
  """The server's state across rounds: the global state, the downlink, the privacy ledger
  (participants per aggregated round) and the checkpoint they are restored from."""

  def __init__(self, dep: Deployment, options: ServerOptions, out_path: str | None):
    self.dep, self.options, self.out_path = dep, options, out_path
    self.n = dep.num_weights
    self.step = jax.jit(functools.partial(rnd.server_step, dep.prism),
                        static_argnames="participants", compiler_options=rnd.compiler_options())
    self.state, self.downlinks = dep.initial, _Downlinks(dep, self.n)
    self.next_round, self.participants = 0, []
    self.ckpt = None
    if options.checkpoint_dir:
      self.ckpt = checkpoint.manager(options.checkpoint_dir)
      if self.ckpt.latest_step() is not None:
        if not options.resume:
          raise ValueError(f"{options.checkpoint_dir} holds the checkpoint of round "
                           f"{self.ckpt.latest_step()}: resume it (resume=True; `flwr run "
                           "... --run-config resume=true`) or choose another directory")
        self._restore()

  def _restore(self):
    self.state, meta = checkpoint.restore_with_meta(self.ckpt, self.state)
    self.next_round, self.participants = meta["next_round"], meta["participants"]
    self.downlinks.restore(meta["downlink"])
    if self.out_path and os.path.exists(self.out_path + ".jsonl"):   # rows after it: redone
      with open(self.out_path + ".jsonl") as f:
        rows = [line for line in f if json.loads(line)["round"] <= self.next_round]
      with open(self.out_path + ".jsonl", "w") as f:
        f.writelines(rows)

  def _save(self):
    if self.ckpt is not None:
      checkpoint.save_with_meta(self.ckpt, self.next_round, self.state, {
          "next_round": self.next_round, "participants": self.participants,
          "downlink": self.downlinks.to_dict()})

  def run_round(self, grid, nodes) -> dict:
    """One round (index ``next_round``, keys as the simulator's): select, exchange, check,
    aggregate what is valid (or skip), checkpoint, log. Returns the round's metrics."""
    dep, r, t0 = self.dep, self.next_round, time.perf_counter()
    ids, k_clients, k_server, rotation = dep.round_plan(r)
    version = int(self.state.round)   # rounds aggregated so far (skipped rounds excluded)
    cfg = {"round": version, "client_key": np.asarray(jax.random.key_data(k_clients)).astype(
        np.int64).tolist()} | ({} if rotation is None else
                                {"rotation": np.asarray(rotation).astype(np.int64).tolist()})
    theta_bits = [jax.nn.sigmoid(s) for s, b in zip(jax.tree.leaves(self.state.scores),
                                                    dep.bit_leaves) if b]
    valid, dropped, rejected, sent, attempts = {}, {}, {}, {}, 0
    for attempt in range(self.options.retries + 1):
      ask = [c for c in ids if c not in valid]
      if not ask or (attempt and len(valid) >= self.options.min_uploads):
        break
      attempts += 1
      live = _online(grid, nodes)
      dropped |= {c: "node offline" for c in ask if c not in live}
      ask = [c for c in ask if c in live]
      replies, lost, bits = self.downlinks.exchange(grid, live, ask, cfg, self.state,
                                                    version, self.options.round_timeout)
      for c, b in bits.items():
        sent[c] = (sent.get(c, (0, ""))[0] + b[0], b[1])
      dropped.update(lost)
      for cid, rep in replies.items():
        try:
          valid[cid] = _decode(dep, rep, theta_bits, version)
          dropped.pop(cid, None)
          rejected.pop(cid, None)
        except UploadError as e:
          rejected[cid] = str(e)
    m = {"round": r + 1, "selected": ids, "dropped": dropped, "rejected": rejected,
         "participants": len(valid), "attempts": attempts,
         "coded_bits_down": sum(bits for bits, _ in sent.values()),
         "coded_bits_down_per_weight": sum(bits for bits, _ in sent.values()) / len(ids) / self.n,
         "downlink_full_fetches": sum(how == "full" for _, how in sent.values())}
    if len(valid) < self.options.min_uploads:
      m |= {"skipped": f"{len(valid)} valid uploads, fewer than min_uploads "
                       f"{self.options.min_uploads}"}
    else:
      m |= self._aggregate(k_server, [(c, *valid[c]) for c in ids if c in valid], rotation,
                           theta_bits)
    self.next_round = r + 1
    self._save()
    m["seconds"] = time.perf_counter() - t0
    if self.out_path:
      with open(self.out_path + ".jsonl", "a") as f:
        f.write(json.dumps(m) + "\n")
    return m

  def _aggregate(self, k_server, decoded, rotation, theta_bits) -> dict:
    """The server step over the valid uploads (the mean over their number) and the round's
    broadcast; updates the privacy ledger with the clients that took part."""
    dep, prism = self.dep, self.dep.prism
    mismatches = self.downlinks.check({d[0]: d[3] for d in decoded}, self.state.scores)
    uploads = jax.tree.map(lambda *xs: jnp.stack(xs), *[d[1] for d in decoded])
    prev, before = jax.device_get(self.state.scores), self.state
    # With PBM the server only needs the per-coordinate sums (secure aggregation in a
    # deployment; here the replies are summed in the clear).
    state, sm, bcast = self.step(k_server, self.state, uploads, jnp.ones((len(decoded),)),
                                 rotation, participants=len(decoded))
    if prism.pbm is not None:   # the clients' own rule, so that all copies agree bitwise
      scores, aux = dep.apply(before.scores, before.aux, bcast, before.round)
      state = state.replace(scores=scores, aux=aux)
    self.state = state
    broadcast_bits = self.downlinks.publish(bcast, int(state.round), prev)
    self.participants.append(len(decoded))
    cm = [d[2] for d in decoded]
    m = {"loss": float(np.mean([c["loss"] for c in cm])),
         "client_seconds": float(np.mean([c["client_seconds"] for c in cm])),
         "coded_bits_per_weight": float(np.mean([c["coded_bits"] for c in cm])) / sum(
             int(np.prod(t.shape)) for t in theta_bits),
         "broadcast_bits_per_weight": broadcast_bits / self.n,
         "downlink_mismatches": len(mismatches), **{k: float(v) for k, v in sm.items()}}
    if prism.local.dp_noise_std:   # local noise: each client's guarantee, worst case all rounds
      m["dp_epsilon"] = dp.epsilon(prism.local.dp_noise_std, self.n, len(self.participants),
                                   dep.dp_delta)
    if prism.pbm is not None:      # summed over the clients that actually took part
      mech = prism.pbm
      m["dp_epsilon"] = pbm.epsilon_of_rounds(self.participants, mech.b, mech.clip_norm,
                                              mech.coord_clip, dep.dp_delta)
    return m


class _Downlinks:
  """The server's side of the downlink: every round's coded broadcast and the ledger of
  which round each client holds (:class:`prism_jax.downlink.Ledger`)."""

  def __init__(self, dep: Deployment, num_weights: int):
    self.dep, self.ledger, self.history = dep, downlink.Ledger(num_weights), []

  def message(self, node: int, cfg, state, r: int, held: int, full: bool):
    """What a client holding round ``held`` needs for round ``r``'s scores: the broadcasts
    it missed, or (``full``) the float32 scores and FedPM's posteriors."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
    held = max(held, 0)
    content = {CONFIG: cfg, DOWN: ConfigRecord(
        {"payloads": [] if full else self.history[held:], "first": r + 1 if full else held + 1})}
    if full:
      content[SCORES] = ArrayRecord(_arrays((state.scores, state.aux)))
    return Message(RecordDict(content), dst_node_id=node, message_type=MessageType.TRAIN)

  def exchange(self, grid, nodes, ids, cfg, state, version: int, timeout=None):
    """Sends this round's clients their training messages (the global model is at
    ``version``); a client that cannot apply its broadcasts (it replies ``need_full``) gets
    the full scores. Returns ``(replies, lost, sent)``: replies and the reasons of clients
    that failed or did not reply in time, by client id, and per client ``(bits sent down,
    "broadcasts" | "full")``."""
    from flwr.app import ConfigRecord
    cfg = ConfigRecord(cfg)
    held = {cid: self.ledger.holds.get(cid, 0) for cid in ids}
    sent = {cid: self.ledger.catch_up(cid) for cid in ids}
    replies, lost = _exchange(grid, {c: self.message(nodes[c], cfg, state, version, held[c],
                                                     how == "full")
                                     for c, (_, how) in sent.items()}, timeout)
    need_full = lambda rep: CONFIG in rep.content and rep.content[CONFIG].get("need_full")  # noqa: E731
    retry = [c for c, rep in replies.items() if need_full(rep)]
    if retry:
      more, lost_again = _exchange(grid, {c: self.message(nodes[c], cfg, state, version,
                                                          version, True) for c in retry},
                                   timeout)
      replies = {c: rep for c, rep in replies.items() if c not in retry} | more
      lost |= lost_again
      for c in retry:
        sent[c] = (sent[c][0] + downlink.full_bits(self.ledger.num_weights), "full")
    return replies, lost, sent

  def check(self, digests: dict, scores) -> list[int]:
    """Clients whose digest differs from the server's scores (should not happen); they get
    the full scores next time."""
    mine = digest(scores)
    bad = [cid for cid, d in digests.items() if d != mine]
    for cid in bad:
      self.ledger.holds[cid] = -1
    return bad

  def to_dict(self) -> dict:
    return {"ledger": self.ledger.to_dict(),
            "history": [base64.b64encode(p).decode() for p in self.history]}

  def restore(self, d: dict) -> None:
    self.ledger = downlink.Ledger.from_dict(d["ledger"])
    self.history = [base64.b64decode(p) for p in d["history"]]

  def publish(self, bcast, r: int, prev_scores) -> int:
    """Codes round ``r``'s broadcast against the scores it started from; returns its bits."""
    self.history.append(downlink.encode(bcast, r, prev_scores, self.dep.bit_leaves,
                                        self.dep.coding_floor))
    self.ledger.publish(8 * len(self.history[-1]))
    return 8 * len(self.history[-1])


def _exchange(grid, msgs: dict, timeout=None) -> tuple[dict, dict]:
  """Sends ``{client id: message}`` and waits up to ``timeout`` seconds. Returns the
  replies and, for the clients without one, why: Flower's error (the ClientApp raised or
  crashed, the node became unavailable) or no reply in time."""
  if not msgs:
    return {}, {}
  # Flower's own error replies (a node that became unavailable) come from the SuperLink:
  # match replies by the message they answer, then by sender.
  by_id = {m.object_id: c for c, m in msgs.items()}
  by_node = {m.metadata.dst_node_id: c for c, m in msgs.items()}
  replies, lost = {}, {}
  for rep in grid.send_and_receive(list(msgs.values()), timeout=timeout):
    cid = by_id.get(rep.metadata.reply_to_message_id, by_node.get(rep.metadata.src_node_id))
    if cid is None:
      continue
    if rep.has_error():
      lost[cid] = f"error {rep.error.code}: {rep.error.reason}"
    else:
      replies[cid] = rep
  for cid in msgs:
    if cid not in replies and cid not in lost:
      lost[cid] = f"no reply within {timeout} s"
  return replies, lost


def _client_nodes(grid, num_clients: int, timeout: float = 300.0) -> dict[int, int]:
  """Client id -> node id, once ``num_clients`` nodes are connected (waiting up to
  ``timeout`` seconds), asking every node for its ``partition-id``."""
  deadline = time.monotonic() + timeout
  while len(node_ids := list(grid.get_node_ids())) < num_clients:
    if time.monotonic() > deadline:
      raise RuntimeError(f"{len(node_ids)} nodes connected after {timeout:.0f}s, the run "
                         f"needs {num_clients}")
    time.sleep(0.2)
  mapping = _ask_client_ids(grid, node_ids)
  missing = sorted(set(range(num_clients)) - set(mapping))
  if missing:
    raise RuntimeError(f"no node holds client ids {missing} (set partition-id per node)")
  return mapping


def _ask_client_ids(grid, node_ids) -> dict[int, int]:
  from flwr.app import ConfigRecord, Message, MessageType, RecordDict
  msgs = [Message(RecordDict({CONFIG: ConfigRecord({"ask": "client_id"})}), dst_node_id=nid,
                  message_type=MessageType.QUERY) for nid in node_ids]
  mapping = {}
  for rep in grid.send_and_receive(msgs):
    if rep.has_error():
      raise RuntimeError(f"node {rep.metadata.src_node_id}: {rep.error}")
    mapping[int(rep.content[CONFIG]["client_id"])] = rep.metadata.src_node_id
  return mapping


def _online(grid, nodes: dict[int, int]) -> dict[int, int]:
  """The clients whose node is online now (Flower cannot deliver to the others). A node not
  seen before (a restarted SuperNode without a registered key has a new id) is asked for
  its client id; ``nodes`` is updated in place."""
  online = set(grid.get_node_ids())
  new = online - set(nodes.values())
  if new:
    nodes.update(_ask_client_ids(grid, sorted(new)))
  return {c: nid for c, nid in nodes.items() if nid in online}


def load_scores(path: str, like):
  """The final global scores a :func:`server_app` run wrote."""
  with np.load(path) as f:
    return _tree([f[f"arr_{i}"] for i in range(len(f.files))], like)


def reference(dep: Deployment, data: rnd.ClientData):
  """What the jitted simulator computes for the same deployment and data: the final global
  scores and per-round ``{"loss", "seconds"}`` (a Flower run of ``dep`` reproduces both
  scores and losses)."""
  step = rnd.make_round_step(dep.prism)
  k_init, k_rounds = dep.keys()
  state = rnd.init_state(dep.prism.model, dep.seed, k_init, dep.score_std, dep.prism)
  rows = []
  for r in range(dep.rounds):
    t0 = time.perf_counter()
    state, m = step(state, data, jax.random.fold_in(k_rounds, r))
    rows.append({"loss": float(m["loss"]), "seconds": time.perf_counter() - t0})
  return state.scores, rows
