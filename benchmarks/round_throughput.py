"""Round throughput: one jitted, vmapped, device-sharded round vs a per-client Python loop.

Prints tables and writes JSON. Timings are steady state (after a warm-up round), the median
of ``--repeats`` runs, each ended by ``block_until_ready``.

  python -m benchmarks.round_throughput                    # about 9 minutes on 2 CPU cores
  python -m benchmarks.round_throughput --quick            # a smoke run

Sections: (a) clients per round, one jit vs Python loop over the same jitted client update;
(b) local iterations; (c) forced host devices 1/2/4/8 (separate processes: compile time,
seconds per round, executables compiled over several rounds); (d) mask sampling alone;
(e) client chunking (``lax.map`` over vmapped chunks) and memory.

  python -m benchmarks.round_throughput --accelerator      # GPU / TPU: 10, 100, 1,000 clients

``--accelerator`` runs only (a), at 10, 100 and 1,000 clients for the default and the paper
generator, within ``--budget_s`` (rows that would not fit are skipped and listed).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax.data import ClientData
from prism_jax import algorithm, sharding
from prism_jax import client, features, generator, losses, masking
from prism_jax import round as rnd

GENERATORS = {   # name: (image_size, nz, ngf)
    "small": (16, 16, 4),
    "default": (32, 128, 8),
    "paper": (32, 128, 64),
}


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeats: int) -> tuple[float, float]:
  """(first call seconds incl. compile, median steady-state seconds)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def setup(gen: str, num_clients: int, local_steps: int, batch: int = 32, chunk=None):
  size, nz, ngf = GENERATORS[gen]
  model = generator.ResNetGenerator(size, 1, nz, ngf)
  obj = client.Objective(model, features.pixels, losses.gaussian_mmd)
  local = client.LocalConfig(local_steps=local_steps, batch_size=batch)
  prism = algorithm.Prism(obj, local, num_clients=num_clients, client_chunk=chunk)
  rng = np.random.default_rng(0)
  data = ClientData(jnp.asarray(rng.integers(0, 256, (num_clients, 64, size, size, 1),
                                                 dtype=np.uint8)),
                        jnp.full((num_clients,), 64, jnp.int32))
  state = algorithm.init_state(model, 0, jax.random.key(0))
  return prism, data, state


def one_jit(prism, data, state, repeats):
  mesh = sharding.client_mesh()
  step = rnd.make_round_step(prism, mesh)
  data = sharding.shard_client_data(data, mesh)
  keys = iter(range(10_000))
  first, steady = _timed(lambda: step(state, data, jax.random.key(next(keys)))[0].scores,
                         repeats)
  return first, steady, step.jitted._cache_size()


def python_loop(prism, data, state, repeats):
  """The same client update, jitted once, called client by client, then the server."""
  update = jax.jit(functools.partial(client.client_update, objective=prism.objective,
                                     cfg=prism.local))
  server_step = jax.jit(functools.partial(rnd.server_step, prism))
  init_w = jax.jit(lambda s: generator.init_weights(prism.model, s))
  images = [data.images[k] for k in range(prism.num_clients)]   # per-client device arrays
  counts = [data.counts[k] for k in range(prism.num_clients)]
  weights_k = jnp.ones((prism.num_clients,))

  def run():
    key = jax.random.key(1)
    k_clients, k_server = jax.random.split(key)
    w = init_w(state.seed)
    masks = [update(state.scores, w, images[k], counts[k], jax.random.fold_in(k_clients, k))[0]
             for k in range(prism.num_clients)]
    stacked = jax.tree.map(lambda *m: jnp.stack(m), *masks)
    return server_step(k_server, state, stacked, weights_k)[0].scores

  return _timed(run, repeats)


def one_client_step(prism, data, state, repeats):
  """Seconds of one local step of one client (jitted client update / local steps)."""
  update = jax.jit(functools.partial(client.client_update, objective=prism.objective,
                                     cfg=prism.local))
  w = generator.init_weights(prism.model, 0)
  _, t = _timed(lambda: update(state.scores, w, data.images[0], data.counts[0],
                               jax.random.key(0))[0], repeats)
  return t / prism.local.local_steps


DEVICE_SCRIPT = r"""
import json, sys, time, jax
sys.path.insert(0, {root!r})
from benchmarks.round_throughput import setup, one_jit
prism, data, state = setup({gen!r}, {clients}, {steps})
first, steady, cache = one_jit(prism, data, state, {repeats})
print(json.dumps({{"devices": jax.device_count(), "compile_plus_first_s": first,
                  "seconds_per_round": steady, "executables": cache}}))
"""


def on_devices(devices, gen, clients, steps, repeats):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  code = DEVICE_SCRIPT.format(root=os.getcwd(), gen=gen, clients=clients, steps=steps,
                              repeats=repeats)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def sampling_rate(n: int, repeats: int) -> float:
  """Bits per second of ``Bernoulli(sigmoid(scores))`` mask sampling, jitted."""
  scores = {"w": jax.random.normal(jax.random.key(0), (n,))}
  f = jax.jit(lambda k, s: masking.sample_binary(k, masking.keep_prob(s)))
  _, t = _timed(lambda: f(jax.random.key(1), scores), repeats)
  return n / t


def clients_row(gen, clients, steps, repeats, chunk=None, loop=True) -> dict:
  """One row of (a): the one-jit round, the Python loop and one client's step."""
  prism, data, state = setup(gen, clients, steps, chunk=chunk)
  first, steady, cache = one_jit(prism, data, state, repeats)
  loop_s = python_loop(prism, data, state, repeats)[1] if loop else None
  t_step = one_client_step(prism, data, state, repeats)
  row = {"generator": gen, "weights": masking.num_weights(state.scores), "clients": clients,
         "client_chunk": chunk, "local_steps": steps, "compile_plus_first_s": first,
         "round_s": steady, "loop_round_s": loop_s,
         "speedup_vs_loop": loop_s / steady if loop_s else None,
         "client_step_s": t_step, "round_over_client_work": steady / (t_step * steps * clients),
         "rounds_per_hour": 3600 / steady,
         "client_steps_per_s": clients * steps / steady, "executables": cache}
  print(json.dumps(row), flush=True)
  return row


# (generator, clients, local steps, client_chunk) of the accelerator section, cheapest first.
ACCELERATOR_ROWS = [("default", 10, 5, None), ("paper", 10, 5, None),
                    ("default", 100, 5, None), ("paper", 100, 5, None),
                    ("default", 1000, 5, 100), ("paper", 1000, 2, 100)]


def accelerator(repeats: int, budget_s: float, only=None) -> dict:
  """(a) at 10 / 100 / 1,000 clients on an accelerator, rows in order while time is left
  (``only``: these numbers of clients)."""
  t0, rows, skipped = time.perf_counter(), [], []
  last = None   # (seconds, clients) of the last row run
  for gen, clients, steps, chunk in ACCELERATOR_ROWS:
    if only and clients not in only:
      continue
    # A row costs about its clients' share of the last one's time; skip it if that won't fit.
    guess = last[0] * clients / last[1] if last else 0.0
    if time.perf_counter() - t0 + guess > budget_s:
      skipped.append(f"{gen} x {clients}")
      continue
    ts = time.perf_counter()
    rows.append(clients_row(gen, clients, steps, repeats, chunk))
    last = (time.perf_counter() - ts, clients)
  return {"clients": rows, "skipped": skipped}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  p.add_argument("--accelerator", action="store_true", help="only (a), 10 to 1,000 clients")
  p.add_argument("--budget_s", type=float, default=240, help="--accelerator's time budget")
  p.add_argument("--clients", default="", help="--accelerator: only these, e.g. 100,1000")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--out", default="benchmarks/results/round_throughput.json")
  args = p.parse_args()
  q = args.quick
  r = 1 if q else args.repeats
  res = {"machine": {"backend": jax.default_backend(), "devices": jax.device_count(),
                     "device": str(jax.devices()[0].device_kind),
                     "cpus": os.cpu_count(), "jax": jax.__version__}}
  if args.accelerator:
    only = [int(c) for c in args.clients.split(",") if c]
    res.update(accelerator(r, args.budget_s, only))
    with open(args.out, "w") as f:
      json.dump(res, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
      f.write(markdown(res))
    print("\n" + markdown(res))
    return

  # (a) clients per round: one jit vs the Python loop, plus the client-work bound.
  # client_chunk=1: one client at a time inside the jit (lax.map), which XLA:CPU runs faster.
  res["clients"] = [clients_row(gen, clients, steps, r, chunk, loop=clients <= 100)
                    for gen, clients, steps, chunk in ([("small", 10, 5, None)] if q else
                                                       [("small", 10, 5, None),
                                                        ("small", 100, 5, None),
                                                        ("small", 1000, 2, None),
                                                        ("default", 10, 5, None),
                                                        ("default", 10, 5, 1),
                                                        ("paper", 10, 1, None),
                                                        ("paper", 10, 1, 1)])]

  # (b) local iterations.
  res["local_steps"] = []
  for steps in ([1, 5] if q else [1, 5, 20]):
    prism, data, state = setup("small", 10, steps)
    _, steady, _ = one_jit(prism, data, state, r)
    res["local_steps"].append({"local_steps": steps, "round_s": steady})
  # (c) devices (forced host devices share the same 2 cores here: correctness and
  # recompilation, not speed-up, are what this shows on CPU).
  res["devices"] = [on_devices(d, "small", 8, 5, r) for d in ([1, 2] if q else [1, 2, 4, 8])]
  # (d) mask sampling alone.
  res["sampling_bits_per_s"] = sampling_rate(3_543_616, r)
  # (e) chunked clients: same round, lax.map over chunks of 10.
  prism, data, state = setup("small", 100 if not q else 20, 2, chunk=10)
  _, steady, _ = one_jit(prism, data, state, r)
  res["chunked"] = {"clients": prism.num_clients, "chunk": 10, "round_s": steady}
  res["peak_rss_mb"] = _rss_mb()
  with open(args.out, "w") as f:
    json.dump(res, f, indent=2)
  print_tables(res)
  md = markdown(res)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(md)
  print("\n" + md)


def markdown(res) -> str:
  """The round-throughput table of docs/performance.md."""
  m = res["machine"]
  where = (f"{m.get('device', m['backend'])}" if m["backend"] != "cpu" else
           f"CPU, {m['cpus']} cores")
  lines = [f"{where}, {m['devices']} device(s), JAX {m['jax']}; "
           "steady-state seconds per round (median), loop = the same jitted client update "
           "called client by client; round/work = round time / (clients x local steps x one "
           "client step).", "",
           "| generator | masked weights | clients | local steps | one-jit round s | loop round s "
           "| speed-up | first round s (compile) | round/work | client steps/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in res["clients"]:
    loop = f"{r['loop_round_s']:.3f}" if r["loop_round_s"] else "-"
    sp = f"{r['speedup_vs_loop']:.2f}x" if r["speedup_vs_loop"] else "-"
    chunk = f" (chunk {r['client_chunk']})" if r.get("client_chunk") else ""
    lines.append(f"| {r['generator']}{chunk} | {r['weights']:,} | {r['clients']} | {r['local_steps']} | "
                 f"{r['round_s']:.3f} | {loop} | {sp} | {r['compile_plus_first_s']:.1f} | "
                 f"{r['round_over_client_work']:.2f} | {r['client_steps_per_s']:.0f} |")
  if "devices" not in res:   # the accelerator section
    return "\n".join(lines + ([f"\nSkipped (time budget): {', '.join(res['skipped'])}."]
                              if res.get("skipped") else []) + [""])
  lines += ["", "Forced host devices (small generator, 8 clients, 5 local steps; they share the "
            "same cores, so this checks sharding and recompilation, not speed-up): " + ", ".join(
                f"{r['devices']} -> {r['seconds_per_round']:.3f} s/round, "
                f"{r['executables']} executable" for r in res["devices"]) + ".",
            f"Mask sampling alone: {res['sampling_bits_per_s'] / 1e6:.0f} Mbit/s "
            "(3.5M-weight Bernoulli draw).",
            f"Chunked clients ({res['chunked']['clients']} clients, lax.map over chunks of "
            f"{res['chunked']['chunk']}): {res['chunked']['round_s']:.3f} s/round. "
            f"Peak host memory {res['peak_rss_mb']:.0f} MB.", ""]
  return "\n".join(lines)


def print_tables(res):
  print(f"\n{'generator':>9} {'weights':>9} {'clients':>7} {'L':>3} {'round s':>8} "
        f"{'loop s':>8} {'speedup':>7} {'compile s':>9} {'round/work':>10} {'steps/s':>8}")
  for r in res["clients"]:
    loop = f"{r['loop_round_s']:.3f}" if r["loop_round_s"] else "-"
    sp = f"{r['speedup_vs_loop']:.1f}x" if r["speedup_vs_loop"] else "-"
    print(f"{r['generator']:>9} {r['weights']:>9,} {r['clients']:>7} {r['local_steps']:>3} "
          f"{r['round_s']:>8.3f} {loop:>8} {sp:>7} {r['compile_plus_first_s']:>9.1f} "
          f"{r['round_over_client_work']:>10.2f} {r['client_steps_per_s']:>8.0f}")
  print("\nlocal steps (small, 10 clients): " + ", ".join(
      f"L={r['local_steps']}: {r['round_s']:.3f}s" for r in res["local_steps"]))
  print("devices (small, 8 clients, L=5): " + ", ".join(
      f"{r['devices']}: {r['seconds_per_round']:.3f}s/round, compile {r['compile_plus_first_s']:.1f}s, "
      f"{r['executables']} executable(s)" for r in res["devices"]))
  print(f"mask sampling: {res['sampling_bits_per_s'] / 1e6:.0f} Mbit/s")
  c = res["chunked"]
  print(f"chunked: {c['clients']} clients in chunks of {c['chunk']}: {c['round_s']:.3f}s/round")
  print(f"peak host RSS: {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
  main()
