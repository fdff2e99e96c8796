"""The node side of the Flower deployment, without JAX: the ``ClientApp`` glue between
Flower messages and a node's plain-data round (:class:`prism_jax.flower.node.Node`), and a
long-lived per-node worker that keeps the node's data and compiled update between rounds.

Flower 1.42 starts a new ClientApp process for every message, so a node that computes in
that process pays Python start-up, JAX import, data load and loading the compiled update
every round. :func:`worker_client_app` instead forwards each message over a local socket to
the node's worker (started by the first message, detached, ended after ``idle_s`` without
a request); the ClientApp process then only imports Flower and NumPy. The worker answers
one request at a time (a SuperNode handles one message at a time); its socket is
authenticated with a random key readable only by the node's user. A worker keeps the code
it started with: after upgrading a node, stop its worker (or wait ``idle_s``).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import threading
import time
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from typing import Callable

from prism_jax.flower.keys import (CONFIG, DOWN, GLOBAL, LOCAL_STATE, METRICS, PROBS,  # noqa: F401
                                   SCORES, UPLOAD)

Train = Callable[[int, dict, dict], tuple[dict, dict]]


def client_app(train: Train):
  """A ``ClientApp`` around ``train(client_id, content, state) -> (reply, state)`` on plain
  data (:meth:`prism_jax.flower.node.Node.train`); the node's state lives in Flower's
  ``Context`` between rounds. A node's client id is its ``partition-id`` node config."""
  from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
  from flwr.clientapp import ClientApp

  app = ClientApp()

  @app.query()
  def query(msg: Message, context) -> Message:
    """Tells the server this node's client id."""
    cid = int(context.node_config["partition-id"])
    return Message(RecordDict({CONFIG: ConfigRecord({"client_id": cid})}), reply_to=msg)

  @app.train()
  def train_handler(msg: Message, context) -> Message:
    cid, c, kept = int(context.node_config["partition-id"]), msg.content, context.state
    content = {CONFIG: dict(c[CONFIG]),
               DOWN: {"payloads": list(c[DOWN]["payloads"]), "first": int(c[DOWN]["first"])},
               SCORES: c[SCORES].to_numpy_ndarrays() if SCORES in c else None}
    state = {GLOBAL: kept[GLOBAL].to_numpy_ndarrays() if GLOBAL in kept else None,
             "round": int(kept[DOWN]["round"]) if DOWN in kept else None,
             "trained": int(kept[DOWN].get("trained", 0)) if DOWN in kept else 0,
             LOCAL_STATE: kept[LOCAL_STATE].to_numpy_ndarrays() if LOCAL_STATE in kept
             else None}
    reply, state = train(cid, content, state)
    if state.get(GLOBAL) is not None:
      kept[GLOBAL] = ArrayRecord(state[GLOBAL])
      kept[DOWN] = ConfigRecord({"round": int(state["round"]),
                                 "trained": int(state.get("trained", 0))})
    if state.get(LOCAL_STATE) is not None:
      kept[LOCAL_STATE] = ArrayRecord(state[LOCAL_STATE])
    if UPLOAD not in reply:   # the node cannot apply its broadcasts: it asks for the scores
      return Message(RecordDict({CONFIG: ConfigRecord(reply[CONFIG])}), reply_to=msg)
    return Message(RecordDict({UPLOAD: ConfigRecord(reply[UPLOAD]),
                               PROBS: ArrayRecord(reply[PROBS]),
                               METRICS: MetricRecord(reply[METRICS])}), reply_to=msg)

  return app


def socket_path(key: str, client_id: int) -> str:
  """Where client ``client_id``'s worker for deployment ``key`` listens (short: Unix
  socket paths are limited to about 100 bytes)."""
  directory = os.path.join(tempfile.gettempdir(), f"prism-{os.getuid()}")
  os.makedirs(directory, mode=0o700, exist_ok=True)
  return os.path.join(directory, f"{key}-{client_id}.sock")


def worker_client_app(key: str, start: Callable[[int, str], list[str]],
                      start_timeout: float = 900.0):
  """A ``ClientApp`` that sends each round to the node's long-lived worker, starting it
  (the command ``start(client_id, socket)``) if none answers. ``key`` names the deployment
  (e.g. a hash of its config), so a changed config gets a new worker."""
  def train(cid: int, content: dict, state: dict):
    return call(socket_path(key, cid), start(cid, socket_path(key, cid)),
                (cid, content, state), start_timeout)
  return client_app(train)


def call(path: str, start_cmd: list[str], request, start_timeout: float = 900.0):
  """``request`` answered by the worker at ``path``, started with ``start_cmd`` first if
  none is listening; a worker's exception is raised here with its traceback."""
  conn = _connect(path)
  if conn is None:
    _remove(path)   # a worker that died leaves its files
    with open(path + ".log", "ab") as log:
      proc = subprocess.Popen(start_cmd, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)   # outlives this ClientApp process
    deadline = time.monotonic() + start_timeout
    while (conn := _connect(path)) is None:
      if proc.poll() is not None or time.monotonic() > deadline:
        with open(path + ".log", "rb") as f:
          tail = f.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"node worker {' '.join(start_cmd)} did not start:\n{tail}")
      time.sleep(0.2)
  with conn:
    conn.send(request)
    status, payload = conn.recv()
  if status != "ok":
    raise RuntimeError(f"node worker failed:\n{payload}")
  return payload


def _connect(path: str):
  try:
    with open(path + ".key", "rb") as f:
      key = f.read()
    return Client(path, family="AF_UNIX", authkey=key)
  except (FileNotFoundError, ConnectionRefusedError, EOFError, OSError):
    return None


def stop_workers(key: str) -> int:
  """Ends the workers of deployment ``key`` on this machine (when a deployment stops);
  returns how many were asked."""
  directory = os.path.dirname(socket_path(key, 0))
  stopped = 0
  for name in os.listdir(directory):
    if name.startswith(key + "-") and name.endswith(".sock"):
      conn = _connect(os.path.join(directory, name))
      if conn is not None:
        with conn:
          conn.send(None)
        stopped += 1
  return stopped


def serve(path: str, train: Train, idle_s: float = 600.0) -> None:
  """The worker's loop: answers ``(client id, content, state)`` requests with ``train``
  until ``idle_s`` seconds pass without one or a ``None`` request asks it to stop."""
  key = secrets.token_bytes(32)
  with Listener(path, family="AF_UNIX", authkey=key) as listener:
    fd = os.open(path + ".key.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
      f.write(key)
    os.replace(path + ".key.tmp", path + ".key")   # clients connect once the key exists
    last = [time.monotonic()]

    def watchdog():
      while time.monotonic() - last[0] < idle_s:
        time.sleep(min(5.0, idle_s))
      _remove(path)
      os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    while True:
      try:
        conn = listener.accept()
      except (AuthenticationError, OSError):   # a caller without the key
        continue
      with conn:
        last[0] = time.monotonic()
        try:
          request = conn.recv()
          if request is None:
            break
          reply = ("ok", train(*request))
        except EOFError:      # the ClientApp process went away before asking
          continue
        except Exception:     # the ClientApp reports it; the worker serves the next round
          reply = ("error", traceback.format_exc())
        try:
          conn.send(reply)
        except OSError:
          pass
        last[0] = time.monotonic()
  _remove(path)


def _remove(path: str) -> None:
  for f in (path + ".key", path):
    if os.path.exists(f):
      os.remove(f)
