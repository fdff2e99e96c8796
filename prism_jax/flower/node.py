"""A node's side of a deployed round (:class:`Node`, on plain data, testable without
Flower) and the ``ClientApp`` that runs it (:func:`client_app`)."""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import client, downlink, generator
from prism_jax import round as rnd
from prism_jax.flower import worker
from prism_jax.flower.deployment import Deployment, digest, sync
from prism_jax.flower.keys import CONFIG, DOWN, GLOBAL, LOCAL_STATE, METRICS, PROBS, SCORES, UPLOAD
from prism_jax.flower.wire import arrays, encode_upload, tree
from prism_jax.sharding import compiler_options

_NODE_CACHE: dict = {}   # (deployment fingerprint, client id) -> compiled update, data


class Node:
  """A client's side of a deployed round on plain data (dicts, lists, numpy arrays; no
  Flower types), so that it runs in the ClientApp process or in a long-lived worker that
  keeps the data and the compiled update between rounds (:mod:`prism_jax.flower.worker`).
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
                                  compiler_options=compiler_options())
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
      scores, aux = tree(content[SCORES], (init.scores, init.aux))
      held = int(cfg["round"])
    elif state.get(GLOBAL) is not None:   # this node's copy from its last round
      scores, aux = tree(state[GLOBAL], (init.scores, init.aux))
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
    state.update({GLOBAL: arrays((scores, aux)), "round": held})
    k_clients = jax.random.wrap_key_data(np.asarray(cfg["client_key"], np.uint32))
    local = client.init_local_state(prism.objective, prism.local, dep.like, cid)
    restart = prism.refine is not None and prism.refine.restarts(state.get("trained", 0),
                                                                    held + 1)
    if state.get(LOCAL_STATE) is not None and not restart:
      local = tree(state[LOCAL_STATE], local)
    rot = ()   # what the round's clients share (PBM: the rotation)
    if "rotation" in cfg:
      rot = prism.rule.shared(jnp.asarray(np.asarray(cfg["rotation"], np.uint32)), scores)
    t0 = time.perf_counter()
    upload, local, metrics = self.update(cid, held + 1)(
        scores, cache["weights"], images, jnp.int32(len(images)),
        jax.random.fold_in(k_clients, cid), feature_params=prism.objective.features.params,
        real_stats=real_stats, local=local, rot=rot)
    jax.block_until_ready(upload)
    seconds = time.perf_counter() - t0
    if jax.tree.leaves(local):
      state.update({LOCAL_STATE: arrays(local), "trained": held + 1})
    payload, probs, digest_ = encode_upload(dep, upload, scores)
    return {UPLOAD: {"mask": payload, "client_id": cid, "round": held,
                     "digest": digest(scores), "mask_digest": digest_},
            PROBS: probs,
            METRICS: {**{k: float(v) for k, v in metrics.items()}, "client_seconds": seconds,
                      "coded_bits": 8 * len(payload)}}, state


def client_app(dep: Deployment, load_data: Callable[[int], tuple],
               compilation_cache: str | None = "~/.cache/prism_jax/xla"):
  """The ``ClientApp`` running :class:`Node` in its own process (see
  :func:`prism_jax.flower.worker.worker_client_app` for a node that stays warm)."""
  return worker.client_app(Node(dep, load_data, compilation_cache).train)
