"""A node's long-lived worker (prism_jax.flower.worker): started by the first request, reused
by the next, reporting the round's exception, refusing callers without its key, and ending
when idle."""
import os
import sys
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest

from prism_jax.flower import worker

WORKER = """
import os, sys
from prism_jax.flower import worker

def train(cid, content, state):
  if content == "fail":
    raise ValueError("the round failed")
  return {"pid": os.getpid(), "cid": cid, "content": content}, {"seen": state.get("seen", 0) + 1}

worker.serve(sys.argv[1], train, float(sys.argv[2]))
"""


def _start(path, idle):
  return [sys.executable, "-c", WORKER, path, str(idle)]


def test_worker_is_started_once_reused_and_reports_errors(tmp_path):
  path = str(tmp_path / "w.sock")
  start = _start(path, 30)
  reply, state = worker.call(path, start, (3, "round 1", {}))
  assert reply["cid"] == 3 and reply["content"] == "round 1" and state == {"seen": 1}
  again, state = worker.call(path, start, (3, "round 2", state))
  assert again["pid"] == reply["pid"] and state == {"seen": 2}    # the same warm process
  with pytest.raises(RuntimeError, match="ValueError: the round failed"):
    worker.call(path, start, (3, "fail", {}))
  after, _ = worker.call(path, start, (3, "round 3", {}))    # it serves the next round
  assert after["pid"] == reply["pid"]
  with pytest.raises(AuthenticationError):
    Client(path, family="AF_UNIX", authkey=b"not the key")
  assert oct(os.stat(path + ".key").st_mode & 0o777) == "0o600"
  with worker._connect(path) as conn:   # asked to stop, it ends and removes its files
    conn.send(None)
  deadline = time.monotonic() + 30
  while os.path.exists(path + ".key") and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not os.path.exists(path) and not os.path.exists(path + ".key")


def test_idle_worker_ends_and_a_new_one_starts(tmp_path):
  path = str(tmp_path / "w.sock")
  start = _start(path, 1)
  first, _ = worker.call(path, start, (0, "a", {}))
  deadline = time.monotonic() + 30
  while os.path.exists(path) and time.monotonic() < deadline:   # idle: it removes its socket
    time.sleep(0.2)
  assert not os.path.exists(path)
  second, _ = worker.call(path, start, (0, "b", {}))
  assert second["pid"] != first["pid"]
  os.kill(second["pid"], 9)


def test_a_worker_that_cannot_start_is_reported(tmp_path):
  path = str(tmp_path / "w.sock")
  with pytest.raises(RuntimeError, match="(?s)did not start.*No module named no_such_module"):
    worker.call(path, [sys.executable, "-m", "no_such_module"], (0, "", {}), 30)
