"""Deployment with Flower (``flwr``): the library's client update and server step on separate
processes or machines, exchanging entropy-coded masks.

* :class:`Node` (run by :func:`client_app` in the ClientApp process, or by a node's
  long-lived worker, :mod:`prism_jax.flower.worker`) brings the node's copy of the
  global scores up to date (the coded broadcasts it missed, applied in order with
  :meth:`prism_jax.rules.Rule.apply`, or the full float32 scores), runs the jitted
  :func:`prism_jax.client.client_update` on the node's own data (``load_data(client_id)``)
  and replies with its mask coded against the global theta (:mod:`prism_jax.coding`;
  PRISM-alpha's probability layers as float32 arrays) and a digest of the scores it rebuilt.
  The global scores, FedPM's posteriors and the local state (GFMN moving averages, carried
  optimizer) stay on the node, in the Flower ``Context``.
* :func:`server_app`: a ``ServerApp`` that runs the rounds: picks clients exactly as the
  simulator does, sends each one what it missed (:class:`prism_jax.downlink.Ledger`),
  decodes the replies, checks every client's digest against its own scores, runs the
  rule's aggregation and the nodes' own compiled ``rule.apply`` and codes the round's
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

The package, in layers: :mod:`~prism_jax.flower.keys` (message record names),
:mod:`~prism_jax.flower.wire` (an upload's coding and decoding), :mod:`~prism_jax.flower.deployment`
(the agreement, syncing a node's scores, the simulator's reference), :mod:`~prism_jax.flower.node`
(the node and its ClientApp), :mod:`~prism_jax.flower.server` (the ServerApp) and
:mod:`~prism_jax.flower.worker` (a node's long-lived worker; no JAX). The names below load
their module on first use, so that the ClientApp process imports only what it needs.
"""
import importlib

_EXPORTS = {
    "Deployment": "deployment", "digest": "deployment", "sync": "deployment",
    "split_data": "deployment", "load_scores": "deployment", "reference": "deployment",
    "Node": "node", "client_app": "node",
    "ServerOptions": "server", "server_app": "server",
    "UploadError": "wire", "mask_digest": "wire", "encode_upload": "wire",
    "decode_upload": "wire",
    "SCORES": "keys", "CONFIG": "keys", "UPLOAD": "keys", "PROBS": "keys", "METRICS": "keys",
    "LOCAL_STATE": "keys", "GLOBAL": "keys", "DOWN": "keys",
}
__all__ = sorted(_EXPORTS)


_MODULES = ("keys", "wire", "deployment", "node", "server", "worker")


def __getattr__(name: str):
  if name in _MODULES:
    return importlib.import_module(f"prism_jax.flower.{name}")
  if name not in _EXPORTS:
    raise AttributeError(f"module 'prism_jax.flower' has no attribute {name!r}")
  return getattr(importlib.import_module(f"prism_jax.flower.{_EXPORTS[name]}"), name)
