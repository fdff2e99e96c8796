"""The ServerApp on an unreliable network, in-process: the real ``ClientApp`` and server
rounds over a grid that delivers messages directly and can lose, fail or corrupt replies.
(The same with processes, TLS and a killed SuperNode: ``test_flower_deploy.py``.)"""
import dataclasses
import functools
import re

import jax
import numpy as np
import pytest

from prism_jax.data import ClientData
from prism_jax import algorithm
from prism_jax import client, downlink, features, flower, generator, losses

pytest.importorskip("flwr")


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
  from flwr.supercore.task_identity import TaskIdentity
  for name in ("_run_id", "_task_id", "_node_id"):   # what a running Flower app would set
    monkeypatch.setattr(TaskIdentity, name, 1, raising=False)


@functools.lru_cache(maxsize=None)
def _setup(rounds=4):
  model = generator.ResNetGenerator(image_size=8, channels=1, nz=4, ngf=2)
  objective = client.Objective(model, features.pixels, losses.gaussian_mmd)
  prism = algorithm.Prism(objective, client.LocalConfig(local_steps=2, batch_size=4),
                    num_clients=3, clients_per_round=2)
  dep = flower.Deployment(prism, seed=1, train_seed=2, rounds=rounds)
  rng = np.random.default_rng(0)
  data = ClientData(rng.integers(0, 255, (3, 8, 8, 8, 1)).astype(np.uint8),
                        np.array([8, 6, 5], np.int32))
  return dep, data


class Grid:
  """Delivers each message to the node's ClientApp at once (node id = client id + 10).
  ``faults(round, client id, attempt) -> None | "lost" | "error" | callable(reply)``."""

  def __init__(self, dep, data, faults=lambda r, c, a: None):
    from flwr.app import Context, RecordDict
    self.app = flower.client_app(dep, functools.partial(flower.split_data, data), None)
    self.contexts = {c + 10: Context(1, c + 10, {"partition-id": c}, RecordDict(), {})
                     for c in range(dep.prism.num_clients)}
    self.faults, self.calls = faults, {}

  def get_node_ids(self):
    return list(self.contexts)

  def send_and_receive(self, msgs, timeout=None):
    from flwr.app import Error, Message
    out = []
    for msg in msgs:
      cid, r = msg.metadata.dst_node_id - 10, int(msg.content[flower.CONFIG]["round"])
      attempt = self.calls[cid, r] = self.calls.get((cid, r), -1) + 1
      fault = self.faults(r, cid, attempt)
      if fault == "lost":
        continue
      if fault == "error":
        out.append(Message(error=Error(2, "ClientApp raised"), reply_to=msg))
        continue
      reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
      out.append(fault(reply) if callable(fault) else reply)
    return out


NODES = {0: 10, 1: 11, 2: 12}


def _run(dep, data, faults=lambda r, c, a: None, grid=None, **options):
  srv = flower.server._Server(dep, flower.ServerOptions(**options), None)
  grid = grid or Grid(dep, data, faults)
  rows = [srv.run_round(grid, NODES) for _ in range(dep.rounds - srv.next_round)]
  return srv, rows


def test_in_process_run_matches_the_simulator():
  dep, data = _setup()
  srv, rows = _run(dep, data)
  scores, sim = flower.reference(dep, data)
  for a, b in zip(jax.tree.leaves(srv.state.scores), jax.tree.leaves(scores)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in sim], rtol=1e-5)
  assert all(r["participants"] == 2 and not r["dropped"] and not r["rejected"] for r in rows)


def _corrupt(reply):
  up = reply.content[flower.UPLOAD]
  up["mask"] = up["mask"][:-3]           # truncated payload
  return reply


def _other_round(reply):
  reply.content[flower.UPLOAD]["round"] = 7
  return reply


@pytest.mark.parametrize("fault,reason", [("error", "error 2: ClientApp raised"),
                                          ("lost", "no reply within"),
                                          (_corrupt, "does not decode|does not match"),
                                          (_other_round, "claims round 7, this is round 1")])
def test_a_failed_or_invalid_upload_is_left_out_and_the_round_goes_on(fault, reason):
  """Round 2: one of the two selected clients fails, is lost or sends a bad upload. The
  round aggregates the other one alone (participants 1: its mask is the whole tally), logs
  why, and later rounds go on (the client catches up)."""
  dep, data = _setup()
  first = {}

  def faults(r, c, a):
    first.setdefault(r, c)
    return fault if (r, c, a) == (1, first.get(1), 0) else None

  srv, rows = _run(dep, data, faults, retries=0)
  bad = first[1]
  log = rows[1]["rejected"] if callable(fault) else rows[1]["dropped"]
  assert list(log) == [bad] and re.search(reason, log[bad])
  assert rows[1]["participants"] == 1 and "loss" in rows[1]
  assert [r["participants"] for r in rows] == [2, 1, 2, 2]
  # Round 2's broadcast counts one participant: the global scores are the one valid
  # client's mask smoothed (MADA mixes them with the previous scores).
  bcast = downlink.decode(srv.downlinks.history[1], 2, _scores_after(dep, data, 1),
                                 dep.bit_leaves)
  assert bcast.participants == 1
  assert all(c.max() <= 1 for c in jax.tree.leaves(bcast.counts))


def _scores_after(dep, data, rounds):
  srv, _ = _run(dataclasses.replace(dep, rounds=rounds), data)
  return jax.device_get(srv.state.scores)


def test_too_few_uploads_retry_the_missing_client_then_skip_the_round():
  dep, data = _setup()
  # Round 1: the first selected client is lost once, then answers the retry: same result
  # as without the fault. Round 3: both selected clients fail, also when asked again:
  # skipped. (``r`` is the model's round, which a skipped round does not advance.)
  first, third = {}, []

  def faults(r, c, a):
    first.setdefault(r, c)
    if r == 0 and c == first[0] and a == 0:
      return "lost"
    if r == 2:
      third.append(c)
      return "error" if len(third) <= 4 else None
    return None

  srv, rows = _run(dep, data, faults, min_uploads=2, retries=1)
  clean, clean_rows = _run(dep, data)
  assert rows[0]["participants"] == 2 and rows[0]["loss"] == clean_rows[0]["loss"]
  assert rows[0]["attempts"] == 2 and rows[1]["attempts"] == 1 and rows[2]["attempts"] == 2
  assert "skipped" in rows[2] and "fewer than min_uploads 2" in rows[2]["skipped"]
  assert "loss" not in rows[2] and len(rows[2]["dropped"]) == 2
  # The skipped round did not move the model: 3 aggregated rounds, 3 broadcasts.
  assert int(srv.state.round) == 3 and len(srv.downlinks.history) == 3


def test_a_restarted_server_continues_from_its_checkpoint(tmp_path):
  """Stop after round 2 of 4, restart (new server, new node processes: their state is
  gone), finish: the same final scores and broadcasts as an uninterrupted run."""
  dep, data = _setup()
  ckpt = str(tmp_path / "server")
  _run(dataclasses.replace(dep, rounds=2), data, checkpoint_dir=ckpt)
  with pytest.raises(ValueError, match="holds the checkpoint of round 2: resume it"):
    _run(dep, data, checkpoint_dir=ckpt)
  srv, rows = _run(dep, data, checkpoint_dir=ckpt, resume=True)
  assert [r["round"] for r in rows] == [3, 4]
  # The new nodes held nothing: those the server had brought up to date before asked for
  # and got the full scores.
  assert rows[0]["downlink_full_fetches"] >= 1
  clean, clean_rows = _run(dep, data)
  for a, b in zip(jax.tree.leaves(srv.state.scores), jax.tree.leaves(clean.state.scores)):
    np.testing.assert_array_equal(a, b)
  assert srv.downlinks.history == clean.downlinks.history
  assert [r["loss"] for r in rows] == [r["loss"] for r in clean_rows[2:]]


def test_server_options_refuse_impossible_values():
  with pytest.raises(ValueError, match="min_uploads must be >= 1"):
    flower.ServerOptions(min_uploads=0)
  with pytest.raises(ValueError, match="round_timeout must be > 0"):
    flower.ServerOptions(round_timeout=0)
  dep, _ = _setup()
  with pytest.raises(ValueError, match="min_uploads 3 exceeds the 2 clients per round"):
    flower.server_app(dep, options=flower.ServerOptions(min_uploads=3))


def test_pbm_accountant_composes_the_rounds_actual_participants():
  from prism_jax import pbm
  args = (0.2, 1.0, 0.5)
  assert pbm.epsilon_of_rounds([8, 8, 8], *args, 1e-5) == pytest.approx(
      pbm.epsilon(8, *args, 3, 1e-5))
  # A round with fewer participants adds more privacy loss.
  assert pbm.epsilon_of_rounds([8, 8, 4], *args, 1e-5) > pbm.epsilon(8, *args, 3, 1e-5)
