"""The deployment's ``ServerApp`` (:func:`server_app`): the rounds over the connected nodes,
with what each one missed sent down (:class:`prism_jax.downlink.Ledger`), the replies
decoded and checked, the rule applied, faults survived (:class:`ServerOptions`) and the
state checkpointed every round."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import checkpoint, downlink
from prism_jax.flower.deployment import Deployment, digest
from prism_jax.flower.keys import CONFIG, DOWN, SCORES
from prism_jax.flower.wire import UploadError, arrays, decode_upload
from prism_jax.sharding import compiler_options


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
      np.savez(out_path, *arrays(server.state.scores))

  return app


class _Server:
  """The server's state across rounds: the global state, the downlink, the privacy ledger
  (participants per aggregated round) and the checkpoint they are restored from."""

  def __init__(self, dep: Deployment, options: ServerOptions, out_path: str | None):
    self.dep, self.options, self.out_path = dep, options, out_path
    self.n = dep.num_weights
    rule = dep.prism.rule   # the server's half of round.server_step, around the nodes' apply
    self.aggregate = jax.jit(rule.aggregate, static_argnums=4,
                             compiler_options=compiler_options())
    self.metrics = jax.jit(rule.metrics, compiler_options=compiler_options())
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
          valid[cid] = decode_upload(dep, rep, theta_bits, version)
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
    bcast, theta_hat = self.aggregate(k_server, before.scores, uploads,
                                      jnp.ones((len(decoded),)), len(decoded), rotation)
    # The new state as the nodes compute it (the same compiled rule): all copies agree bitwise.
    scores, aux = dep.apply(before.scores, before.aux, bcast, before.round)
    sm = self.metrics(bcast, theta_hat, scores)
    self.state = state = before.replace(scores=scores, aux=aux, round=before.round + 1)
    broadcast_bits = self.downlinks.publish(bcast, int(state.round), prev)
    self.participants.append(len(decoded))
    cm = [d[2] for d in decoded]
    m = {"loss": float(np.mean([c["loss"] for c in cm])),
         "client_seconds": float(np.mean([c["client_seconds"] for c in cm])),
         "coded_bits_per_weight": float(np.mean([c["coded_bits"] for c in cm])) / sum(
             int(np.prod(t.shape)) for t in theta_bits),
         "broadcast_bits_per_weight": broadcast_bits / self.n,
         "downlink_mismatches": len(mismatches), **{k: float(v) for k, v in sm.items()}}
    eps = prism.rule.epsilon(self.participants, dep.dp_delta)   # the rounds' actual clients
    if eps is not None:
      m["dp_epsilon"] = eps
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
      content[SCORES] = ArrayRecord(arrays((state.scores, state.aux)))
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
