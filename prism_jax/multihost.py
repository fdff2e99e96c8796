"""More than one host: one JAX process per host (``jax.distributed``), one global device mesh.

Every process runs the same program. The round's client axis is sharded over the mesh of all
processes' devices (:func:`prism_jax.sharding.client_mesh`), and each process builds only the
rows of the client arrays that its own devices hold (:func:`client_arrays`): no host holds
the whole padded client data or every client's local state. The server's reduction over
clients is then a cross-host collective inside the same jitted round. Host-side work reads
replicated results (:func:`to_host`); files are written by process 0 (:func:`is_main`),
checkpoints by orbax on every process. On one process every function here reduces to the
single-host behaviour, so the simulator has one code path.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """``jax.distributed.initialize``; arguments left None are detected by JAX (TPU pod slices,
  SLURM, Open MPI, Kubernetes); give all three to launch by hand (e.g. on localhost, where
  CPU devices talk through gloo collectives)."""
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches ``name`` (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def local_rows(num_rows: int, sharding) -> list[tuple[int, int]]:
  """The distinct ``[start, stop)`` row ranges of a ``[num_rows, ...]`` array that this
  process's devices hold under ``sharding`` (all rows when replicated)."""
  index_map = sharding.addressable_devices_indices_map((num_rows,))
  return sorted({idx[0].indices(num_rows)[:2] for idx in index_map.values()})


def client_arrays(num_rows: int, load: Callable, sharding):
  """A PyTree of global arrays with leading axis ``num_rows``, built from ``load(start, stop)``
  (a PyTree of host arrays holding rows ``[start, stop)``), called once per range this
  process holds (:func:`local_rows`): the other processes' rows are never loaded here."""
  parts = {r: load(*r) for r in local_rows(num_rows, sharding)}
  first = next(iter(parts.values()))
  treedef = jax.tree.structure(first)
  flat = {r: jax.tree.leaves(p) for r, p in parts.items()}

  def leaf(i, x):
    def rows(idx):
      start, stop, _ = idx[0].indices(num_rows)
      return np.asarray(flat[(start, stop)][i])[(slice(None),) + tuple(idx[1:])]
    return jax.make_array_from_callback((num_rows, *np.shape(x)[1:]), sharding, rows)

  return jax.tree.unflatten(treedef, [leaf(i, x) for i, x in enumerate(jax.tree.leaves(first))])


def put(tree, shardings):
  """Places host-local values (the same on every process) with ``shardings`` (a matching
  PyTree, or one sharding for all); leaves already placed that way are kept as they are."""
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(_put_leaf, tree, shardings)
  return jax.tree.map(lambda x: _put_leaf(x, shardings), tree)


def _put_leaf(x, sharding):
  if isinstance(x, jax.Array):
    if x.sharding == sharding:
      return x
    if jax.process_count() == 1 or not x.is_fully_addressable:
      return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put_leaf(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def to_host(tree):
  """Numpy copies of (global) arrays: a replicated array from this process's own copy, a
  sharded one gathered from every process (a collective: every process must call it)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)
