"""Two processes x 2 CPU devices (jax.distributed on localhost, gloo collectives) against one
process with 4 devices: the same run, each process holding only its half of the clients."""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from prism_jax import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SGD: Adam's sign-like steps would turn reduction-order noise into different scores.
OVERRIDES = ("image_size=16", "nz=16", "ngf=4", "num_clients=4", "clients_per_round=3",
             "local.local_steps=3", "local.batch_size=16", "local.optimizer_name=sgd",
             "local.learning_rate=1.0", "rounds=3", "sample_every=3", "checkpoint_every=2",
             "eval.every=0", "num_samples=16")


def _launch(workdir, devices, extra=(), log="log"):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
         *[f"--config.{o}" for o in OVERRIDES], *extra]
  out = open(os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}.{log}"), "w")
  return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT), out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  address = f"localhost:{_free_port()}"
  procs = [_launch(str(tmp / "one"), 4)]
  procs += [_launch(str(tmp / "two"), 2, ("--multihost", f"--coordinator_address={address}",
                                          "--num_processes=2", f"--process_id={i}"), f"log{i}")
            for i in range(2)]
  for proc, out in procs:
    rc = proc.wait(timeout=900)
    out.close()
    assert rc == 0, open(out.name).read()[-3000:]
  return tmp


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_as_many_devices(runs):
  one, two = _rows(runs / "one"), _rows(runs / "two")
  assert [r["round"] for r in two] == [1, 2, 3]
  for a, b in zip(one, two):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)   # cross-host reduction
    assert b["coded_bits_up"] == a["coded_bits_up"]                # the same masks
    assert b["coded_bits_down"] == a["coded_bits_down"]            # the same broadcast
  with np.load(runs / "one" / "model.npz") as a, np.load(runs / "two" / "model.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:                                              # the same final scores
      np.testing.assert_array_equal(a[k], b[k])
  assert sorted(os.listdir(runs / "two" / "checkpoints")) == ["2", "3"]


@pytest.mark.slow
def test_each_process_holds_only_its_clients(runs):
  """The data each process built (printed by client_data.placed_client_data), and only process 0
  wrote files."""
  held = {}
  for i in range(2):
    log = open(runs / f"two.log{i}").read()
    held[i] = re.search(r"process (\d)/2: clients (\S+) of 4, images \[(\d+),", log).groups()
  assert held == {0: ("0", "0-1", "1"), 1: ("1", "2-3", "1")}   # one client per device
  single = open(runs / "one.log").read()
  assert re.search(r"process 0/1: clients 0-3 of 4", single)
  assert "round    1/3" not in open(runs / "two.log1").read()   # no progress from process 1


def test_local_rows_and_client_arrays_on_one_process():
  """Rows per device of a sharded array, each range loaded once; replicated: all rows."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(jax.devices(), ("clients",))
  n = 2 * mesh.size
  loads = []

  def load(start, stop):
    loads.append((start, stop))
    return {"x": np.arange(start, stop)[:, None] * np.ones((1, 3)), "c": np.arange(start, stop)}

  out = multihost.client_arrays(n, load, NamedSharding(mesh, P("clients")))
  np.testing.assert_array_equal(np.asarray(out["c"]), np.arange(n))
  assert out["x"].shape == (n, 3) and sorted(loads) == [(2 * d, 2 * d + 2)
                                                       for d in range(mesh.size)]
  assert multihost.local_rows(n, NamedSharding(mesh, P())) == [(0, n)]
