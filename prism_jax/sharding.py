"""Where a simulated round runs: a 1-D device mesh whose axis is the client axis.

Clients (their data, local states and work) are split over the mesh's devices when they
divide evenly, else replicated; the global parameters are replicated on every device.
"""
from __future__ import annotations

import math
import os

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prism_jax.data import ClientData

AXIS = "clients"


def client_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all) whose axis is the client axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(devices, (AXIS,))


def client_sharding(mesh: Mesh, num_clients: int) -> NamedSharding:
  """Arrays with a leading client axis: split over the mesh if the clients divide evenly over
  its devices, else replicated."""
  return NamedSharding(mesh, P(AXIS) if num_clients % mesh.size == 0 else P())


def shard_client_data(data: ClientData, mesh: Mesh) -> ClientData:
  """Places in-memory client data on the mesh (:func:`client_sharding`). Across hosts, build
  each process's rows only: :func:`prism_jax.multihost.client_arrays`."""
  return jax.device_put(data, client_sharding(mesh, data.num_clients))


def state_shardings(state, mesh: Mesh, num_clients: int):
  """Where the round keeps its state: the global parameters replicated on every device, each
  client's local state with that client's data (:func:`client_sharding`)."""
  replicated = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda _: replicated, state)
  return shardings.replace(local_states=jax.tree.map(
      lambda _: client_sharding(mesh, num_clients), state.local_states))


def client_slots(prism, devices: int) -> tuple[int | None, int]:
  """``(chunk, slots)``: the clients vmapped at once per device and the round's client slots,
  a multiple of ``devices * chunk`` (slots past ``per_round`` are empty). The chunk is capped
  at a device's share of the round, so a chunk larger than the round pads no empty work."""
  chunk = prism.client_chunk and min(prism.client_chunk, math.ceil(prism.per_round / devices))
  group = devices * (chunk or 1)
  return chunk, math.ceil(prism.per_round / group) * group


# LLVM's optimisation level for the round's CPU code: at 1 instead of XLA's default 3 the
# round compiles 2-2.5x faster (default MNIST run: 26 -> 10 s; docs/performance.md) and
# ran as fast or up to 7% faster in the timings there. XLA_FLAGS=
# --xla_backend_optimization_level=N takes precedence.
CPU_OPT_LEVEL = 1


def compiler_options() -> dict:
  """XLA options of the round's executables (and a Flower node's update): on CPU, LLVM
  optimisation level :data:`CPU_OPT_LEVEL` unless ``XLA_FLAGS`` sets one; else none."""
  if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get(
      "XLA_FLAGS", ""):
    return {}
  return {"xla_backend_optimization_level": CPU_OPT_LEVEL}
