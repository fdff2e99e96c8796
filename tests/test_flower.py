"""Flower deployment path: a Flower simulation (Ray backend, separate actor processes) of a
few rounds reproduces the jitted simulator for the same config, seeds and data."""
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from prism_jax.data import ClientData
from prism_jax import algorithm, rules
from prism_jax import client, downlink, features, flower, generator, losses, masking, pbm
from prism_jax import round as rnd


def _setup(mechanism=""):
  model = generator.ResNetGenerator(image_size=16, channels=1, nz=8, ngf=4)
  objective = client.Objective(model, features.pixels, losses.gaussian_mmd)
  mech = None
  if mechanism == "pbm":
    n = masking.num_weights(jax.eval_shape(lambda: generator.init_weights(model, 0)))
    mech = pbm.Mechanism.for_model(0.25, 0.05, n)
  # "refine": the loss changes at round 3 and carried optimizer states restart there, also
  # on nodes that sit round 3 out.
  refine = algorithm.Refine(3, losses.energy_distance) if mechanism == "refine" else None
  local = client.LocalConfig(local_steps=3, batch_size=4, carry_optimizer=refine is not None)
  rule = rules.PBMRule(mechanism=mech) if mech else rules.PrismRule()
  prism = algorithm.Prism(objective, local, num_clients=3, clients_per_round=2, rule=rule,
                          refine=refine)
  dep = flower.Deployment(prism, seed=1, train_seed=2, rounds=3 if mech else 5)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (3, 12, 16, 16, 1)).astype(np.uint8)
  return dep, ClientData(images, np.array([12, 9, 6], np.int32))


def _flower_matches_simulator(tmp_path, mechanism="", tol=1e-5):
  """Runs the Flower simulation of :func:`_setup` in its own process and checks its final
  scores and per-round losses against the jitted simulator's; returns its metric rows."""
  pytest.importorskip("flwr")
  pytest.importorskip("ray")
  out = str(tmp_path / "flower")
  # The deployment at XLA's default optimisation level (the digests check that the clients'
  # programs rebuild the server's scores bit for bit as a real deployment compiles them).
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  proc = subprocess.run([sys.executable, __file__, out, mechanism], capture_output=True,
                        text=True, timeout=900, cwd=os.path.dirname(os.path.dirname(__file__)),
                        env=dict(os.environ, XLA_FLAGS=flags.strip()))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  dep, data = _setup(mechanism)
  scores, sim_rows = flower.reference(dep, data)
  got = flower.load_scores(out + ".npz", dep.like)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(scores)):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
  with open(out + ".jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["round"] for r in rows] == list(range(1, dep.rounds + 1))
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in sim_rows],
                             rtol=tol)
  # Every participant rebuilt the server's scores bit for bit (digests equal) from the
  # broadcasts, catching up on the rounds it missed, without fetching the full scores.
  assert all(r["downlink_mismatches"] == 0 and r["downlink_full_fetches"] == 0 for r in rows)
  return dep, rows


@pytest.mark.slow
def test_flower_run_matches_the_simulator(tmp_path):
  _, rows = _flower_matches_simulator(tmp_path)
  # Uploads were entropy-coded against the broadcast theta: below 1 bit per weight.
  assert all(0 < r["coded_bits_per_weight"] < 1 for r in rows)
  # The downlink: coded broadcasts of mask counts; nothing sent in round 1.
  assert rows[0]["coded_bits_down"] == 0 and sum(r["coded_bits_down"] for r in rows) > 0
  assert all(0 < r["broadcast_bits_per_weight"] < 3 for r in rows)


@pytest.mark.slow
def test_flower_pbm_run_matches_the_simulator(tmp_path):
  """PBM over Flower: clients upload the bits of their rotated updates, the server sums them
  and broadcasts the sums (to float rounding of the simulator, which rebuilds inside its
  round)."""
  dep, rows = _flower_matches_simulator(tmp_path, "pbm", tol=1e-4)
  n = masking.num_weights(dep.like)
  assert all(r["coded_bits_per_weight"] == 8 * -(-pbm.padded_size(n) // 8) / n for r in rows)
  assert [r["dp_epsilon"] for r in rows] == sorted(r["dp_epsilon"] for r in rows)


@pytest.mark.slow
def test_flower_refined_run_matches_the_simulator(tmp_path):
  """A loss curriculum with carried optimizer states over Flower: nodes switch the loss and
  restart their optimizer states as the simulator's round does."""
  dep, _ = _flower_matches_simulator(tmp_path, "refine")
  plan = [dep.round_plan(r)[0] for r in range(dep.rounds)]
  assert any(c not in plan[2] for c in plan[3]), "no node sat the switch round out"


def test_sync_applies_missed_broadcasts_and_refuses_wrong_rounds():
  """A node's catch-up: the server's own rule on decoded broadcasts; a gap, a repeated or a
  corrupt broadcast raises DownlinkError (the node then asks for the full scores)."""
  dep, data = _setup()
  step = rnd.make_round_step(dep.prism, with_uploads=True)
  state, payloads = dep.initial, []
  data = ClientData(data.images, data.counts)
  for r in range(3):
    prev = jax.device_get(state.scores)
    state, _, (_, _, bcast) = step(state, data, jax.random.key(r))
    payloads.append(downlink.encode(bcast, r + 1, prev, dep.bit_leaves))
  scores, aux, held = flower.sync(dep, dep.initial.scores, dep.initial.aux, 0, payloads, 1)
  assert held == 3 and flower.digest(scores) == flower.digest(state.scores)
  with pytest.raises(downlink.DownlinkError, match="start at round 2.*holds round 0"):
    flower.sync(dep, dep.initial.scores, dep.initial.aux, 0, payloads[1:], 2)
  with pytest.raises(downlink.DownlinkError, match="round 2 does not decode"):
    flower.sync(dep, dep.initial.scores, dep.initial.aux, 0,
                [payloads[0], payloads[1][:-5]], 1)


def test_server_sends_missed_broadcasts_and_full_scores_on_request(monkeypatch):
  """The ServerApp's downlink: a client that missed rounds gets the broadcasts it missed in
  order; one that cannot apply them (here: it lost its state) asks for and gets the full
  scores; both are counted."""
  pytest.importorskip("flwr")
  from flwr.app import ConfigRecord, Message, RecordDict
  from flwr.supercore.task_identity import TaskIdentity
  for name in ("_run_id", "_task_id", "_node_id"):   # what a running ServerApp would set
    monkeypatch.setattr(TaskIdentity, name, 1, raising=False)
  dep, data = _setup()
  n = sum(x.size for x in jax.tree.leaves(dep.like))
  step = rnd.make_round_step(dep.prism, with_uploads=True)
  down, state = flower.server._Downlinks(dep, n), dep.initial
  for r in range(2):
    prev = jax.device_get(state.scores)
    state, _, (_, _, bcast) = step(state, ClientData(data.images, data.counts),
                                   jax.random.key(r))
    down.publish(bcast, r + 1, prev)
  seen = []

  class Grid:   # client 0 lost its state and asks for the full scores; client 1 applies
    def send_and_receive(self, msgs, timeout=None):
      out = []
      for msg in msgs:
        cid, content = msg.metadata.dst_node_id, msg.content
        seen.append((cid, list(content[flower.DOWN]["payloads"]), flower.SCORES in content))
        need = cid == 0 and flower.SCORES not in content
        out.append(Message(RecordDict({flower.CONFIG: ConfigRecord(
            {"need_full": need, "client_id": cid})}), reply_to=msg))
      return out

  replies, lost, sent = down.exchange(Grid(), {0: 0, 1: 1}, [0, 1], {"round": 2}, state, 2)
  assert not lost
  assert len(replies) == 2
  # First both were sent rounds 1 and 2's broadcasts; then client 0 the full scores.
  assert seen[0] == (0, down.history, False) and seen[1] == (1, down.history, False)
  assert seen[2] == (0, [], True)
  missed = sum(8 * len(p) for p in down.history)
  assert sent == {0: (missed + downlink.full_bits(n), "full"), 1: (missed, "broadcasts")}
  assert down.check({0: flower.digest(state.scores), 1: "0" * 16}, state.scores) == [1]
  assert down.ledger.holds[1] == -1   # a client whose digest differs gets full scores next


def test_deployment_refuses_dense_fedavg():
  dep, _ = _setup()
  dense = algorithm.Prism(dep.prism.objective, dep.prism.local, num_clients=3,
                          rule=rules.FedAvgRule())
  with pytest.raises(ValueError, match="fedavg"):
    flower.Deployment(dense)


if __name__ == "__main__":   # the Flower run, in its own process (Ray starts actors)
  from flwr.simulation import run_simulation
  dep, data = _setup(sys.argv[2])
  run_simulation(flower.server_app(dep, sys.argv[1]),
                 flower.client_app(dep, functools.partial(flower.split_data, data)),
                 num_supernodes=3,
                 backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}})
