"""A deployment across processes, as ``experiments.flower.deploy`` runs it: SuperLink,
SuperNodes and the apps over TLS with SuperNode authentication. A SuperNode whose key is
not registered is refused; a SuperNode killed mid-run is dropped and the rounds go on; a
stopped server resumes from its checkpoint."""
import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("flwr")

CONFIG = """
from experiments.configs import mnist_cpu


def get_config():
  c = mnist_cpu.get_config("mmd")
  c.image_size, c.nz, c.ngf, c.num_clients, c.clients_per_round = 8, 4, 2, 3, 2
  c.rounds, c.local.local_steps, c.local.batch_size = {rounds}, 2, 8
  c.deploy.round_timeout = 300.0   # generous: a slow machine compiles in round 1
  c.cache_dir = {cache!r}
  return c
"""


def _rows(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def _wait(proc, path, rounds, timeout=900):
  deadline = time.monotonic() + timeout
  while len(_rows(path)) < rounds and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(1)
  return _rows(path)


def _log(tmp_path, name):
  with open(tmp_path / name) as f:
    return f.read()


def test_tls_node_auth_dropout_and_server_restart(tmp_path):
  from experiments.flower import deploy as fd
  from experiments.flower.client import load_config
  from prism_jax import flower
  config = str(tmp_path / "config.py")
  with open(config, "w") as f:
    f.write(CONFIG.format(rounds=4, cache=str(tmp_path / "cache")))
  fed = fd.start_federation(str(tmp_path), 3, config, {"PRISM_WORKER_IDLE_S": "60"})
  try:
    # A SuperNode with a key the SuperLink does not know: refused, it exits at once.
    rogue_key, _ = fd.write_node_key(fed.secrets, "rogue")
    rogue = fed.node(3, 4, rogue_key)
    assert rogue.wait(120) != 0
    assert "Failed to activate SuperNode" in _log(tmp_path, "supernode-3.log")
    listed = subprocess.run(["flwr", "supernode", "ls", "--format", "json"], env=fed.env,
                            capture_output=True, text=True)
    assert len(json.loads(listed.stdout)["nodes"]) == 3

    # The run: round 2's first selected client loses its SuperNode (SIGKILL) after
    # round 1; its rounds go on with the other client (the victim's node stops answering;
    # Flower reports it unavailable about a minute after its last heartbeat).
    dep = flower.Deployment.from_config(load_config(config))
    victim = next(c for r in range(1, 4) for c in dep.round_plan(r)[0])
    run = fed.run()
    rows = _wait(run, fed.out + ".jsonl", 1)
    assert rows and rows[0]["participants"] == 2, _log(tmp_path, "run.log")[-3000:]
    os.killpg(fed.nodes[victim].pid, signal.SIGKILL)
    assert run.wait(900) == 0, _log(tmp_path, "run.log")[-3000:]
    rows = _rows(fed.out + ".jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    hit = [r for r in rows[1:] if victim in r["selected"]]
    assert hit and all(str(victim) in r["dropped"] and r["participants"] == 1 and "loss" in r
                       for r in hit)
    # No upload came from anyone but the three registered clients.
    assert all(set(r["selected"]) <= {0, 1, 2} for r in rows)

    # Restart: a new SuperNode for the victim (same key, same node id), the server resumes
    # its checkpoint of round 4 and runs 2 more rounds.
    fed.node(victim, 3, os.path.join(fed.secrets, f"node{victim}"))
    with open(config, "w") as f:
      f.write(CONFIG.format(rounds=6, cache=str(tmp_path / "cache")))
    run = fed.run(resume=True)
    assert run.wait(900) == 0, _log(tmp_path, "run.log")[-3000:]
    rows = _rows(fed.out + ".jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
  finally:
    fed.stop()
