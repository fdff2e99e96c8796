"""The accelerator benchmark's smoke mode runs the paper's path (official VGG19 + GFMN) on CPU;
the before/after check of a refactor sees one changed bit."""
import json

import pytest
from PIL import Image

from benchmarks import accelerator


@pytest.mark.slow
def test_accelerator_benchmark_smoke_writes_json_and_grid(tmp_path, monkeypatch):
  monkeypatch.setenv("PRISM_JAX_CACHE", str(tmp_path / "cache"))
  accelerator.main(["--smoke", "--budget_s=1", f"--out={tmp_path}"])
  result = json.loads((tmp_path / "accelerator.json").read_text())
  assert result["rounds"] == 2 and len(result["loss"]) == 2   # compile + one steady round
  assert result["features"] == "vgg19_bn-official-L16" and result["local_steps"] == 2
  assert 0 < result["seconds_per_round"] <= result["first_round_seconds (compile + run)"]
  assert Image.open(tmp_path / "accelerator_samples.png").size[0] > 16


def test_accelerator_rows_stop_when_the_next_would_not_fit(monkeypatch):
  """Rows run cheapest first; a row whose estimated time (the last row's, scaled by clients)
  would pass the budget is skipped and listed; ``only`` keeps the named client counts."""
  from benchmarks import round_throughput as rt
  clock = {"t": 0.0}
  monkeypatch.setattr(rt.time, "perf_counter", lambda: clock["t"])

  def fake_row(gen, clients, steps, repeats, chunk=None, loop=True):
    clock["t"] += clients * 0.1            # a row's cost grows with its clients
    return {"generator": gen, "clients": clients}
  monkeypatch.setattr(rt, "clients_row", fake_row)
  res = rt.accelerator(1, budget_s=25.0)
  assert [(r["generator"], r["clients"]) for r in res["clients"]] == [
      ("default", 10), ("paper", 10), ("default", 100), ("paper", 100)]
  assert res["skipped"] == ["default x 1000", "paper x 1000"]
  only = rt.accelerator(1, budget_s=1e9, only=[1000])
  assert {r["clients"] for r in only["clients"]} == {1000} and not only["skipped"]


def test_vs_official_table_sets_the_ratios_beside_the_ceiling():
  from benchmarks import vs_official
  result = {"threads": 2, "matmul_gflops": {"jax": 160.0, "torch": 150.0}, "rows": [
      {"row": "pixels", "official_s": 1.0, "prism_jax_s": 2.0, "speedup": 0.5,
       "gflop_per_step": 120.0, "official_gflops": 120.0, "prism_jax_gflops": 60.0,
       "seconds_at_matmul_peak": 0.75, "target_s": 1 / 1.5}]}
  md = vs_official.markdown(result)
  assert "JAX 160, torch 150 GFLOP/s" in md
  assert "| pixels | 1.00 | 2.00 | 0.50x | - | - | 120 | 120 | 60 | 0.75 | 0.67 |" in md
  result["rows"][0].update(prism_jax_bf16_s=0.5, speedup_bf16=2.0)
  assert "| pixels | 1.00 | 2.00 | 0.50x | 0.50 | 2.00x | 120 |" in vs_official.markdown(result)


def test_loss_choice_variants_build_the_losses_they_name():
  """Every variant's flags set fields that exist, and a variant's loss is the weighted sum
  of the terms its flags name (zero-weight terms dropped)."""
  import ast
  import os
  import jax
  import numpy as np
  from benchmarks import loss_choice, loss_choice_config
  from experiments.configs import overrides
  from prism_jax import losses
  x = jax.random.normal(jax.random.key(0), (8, 9))     # 3 x 3 images for edge_w2
  y = jax.random.normal(jax.random.key(1), (8, 9))
  value = lambda v: v if v in ("sum", "sq", "l1") else ast.literal_eval(v)
  mmd_file, variant = loss_choice.with_config([])[0][len("--config="):].split(":")
  root = os.path.dirname(os.path.dirname(os.path.abspath(loss_choice.__file__)))
  assert variant == "mmd" and os.path.exists(os.path.join(root, mmd_file))
  assert loss_choice.with_config(["--config.ngf=32"]) == [loss_choice._MMD, "--config.ngf=32"]
  for key, (label, flags) in loss_choice.VARIANTS.items():
    config = loss_choice_config.get_config()
    for flag in flags:
      field, v = flag[len("--config."):].split("=")
      overrides.override(config, field, value(v))
    if "Sinkhorn" not in label:
      assert config.loss.name == "gaussian_mmd", key
      continue
    got = losses.get_loss(config.loss.name, **config.loss.kwargs).apply(x, y, ())[0]
    k = config.loss.kwargs
    want = (losses.sinkhorn_divergence(x, y, eps=k.sinkhorn.eps, cost=k.sinkhorn.cost)
            + k.gaussian_mmd.weight * losses.gaussian_mmd(x, y, k.gaussian_mmd.bandwidths)
            + k.marginal_w2.weight * losses.marginal_w2(x, y)
            + k.edge_w2.weight * losses.edge_w2(x, y))
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
    # The label names what the flags set.
    assert ("MMD" in label) == (k.gaussian_mmd.weight > 0), key
    assert ("narrow" in label) == (tuple(k.gaussian_mmd.bandwidths) == (0.01, 0.03)), key
    assert ("intensity" in label) == (k.marginal_w2.weight > 0), key
    assert ("edge" in label) == (k.edge_w2.weight > 0), key
    assert f"Sinkhorn {k.sinkhorn.eps:g}" in label.replace("eps ", ""), key


def test_loss_choice_curve_accumulates_training_seconds(tmp_path):
  from benchmarks import loss_choice
  rows = [{"round": 0, "domain_fid_fixed": 900.0}, {"round": 1, "seconds": 10.0},
          {"round": 2, "seconds": 12.5}]
  rows[2].update({f"domain_fid_{m}": i + 1.0 for i, m in enumerate(loss_choice.MODES)},
                 legibility_fixed=0.25)
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  assert loss_choice.curve_rows(str(tmp_path), "run") == [
      {"round": 2, "train_s": 22.5, "fixed": 1.0, "resampled": 2.0, "threshold": 3.0,
       "legibility": 0.25}]


def test_loss_step_cost_cases_compute_the_terms_they_name():
  """Each single-term case's loss is that term of the default's transport loss alone, the
  transport cases (unrolled or looped Sinkhorn) are their sum, no case refines to another
  loss, and a typo is refused."""
  import jax
  import numpy as np
  import pytest
  from benchmarks import loss_step_cost
  from prism_jax import losses
  x = jax.random.normal(jax.random.key(0), (8, 16))     # 4 x 4 images for edge_w2
  y = jax.random.normal(jax.random.key(1), (8, 16))
  k = loss_step_cost.case_config("transport").loss.kwargs
  alone = {}
  for name in loss_step_cost.TERMS:
    c = loss_step_cost.case_config(name)
    assert c.refine.start is None, name
    term = {a: v for a, v in k[name].items() if a != "weight"}
    alone[name] = float(losses.LOSSES[name](x, y, **term))
    got = float(losses.get_loss(c.loss.name, **c.loss.kwargs).apply(x, y, ())[0])
    np.testing.assert_allclose(got, alone[name], rtol=1e-5, err_msg=name)
  c = loss_step_cost.case_config("transport")
  got = float(losses.get_loss(c.loss.name, **c.loss.kwargs).apply(x, y, ())[0])
  np.testing.assert_allclose(got, sum(alone.values()), rtol=1e-5)
  c = loss_step_cost.case_config("transport_loop")   # the same loss, its Sinkhorn in a loop
  assert c.loss.kwargs.sinkhorn.unroll == 1 and "unroll" not in k.sinkhorn
  looped = float(losses.get_loss(c.loss.name, **c.loss.kwargs).apply(x, y, ())[0])
  np.testing.assert_allclose(looped, sum(alone.values()), rtol=1e-5)
  assert loss_step_cost.case_config("mmd").loss.name == "gaussian_mmd"
  with pytest.raises(ValueError, match="unknown case 'sinkhron'"):
    loss_step_cost.case_config("sinkhron")


def test_same_run_sees_a_changed_bit_and_ignores_timings(tmp_path):
  import numpy as np

  from benchmarks import same_run

  def run(name, loss, seconds, mask):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps({"round": 1, "loss": loss,
                                                 "seconds": seconds}) + "\n")
    np.savez(d / "model.npz", mask=np.array(mask, np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "samples.png")
    return str(d)
  a = run("a", 0.5, 1.0, [1, 0])
  assert same_run.differences(a, run("b", 0.5, 9.0, [1, 0])) == []
  assert same_run.differences(a, run("c", 0.5, 1.0, [1, 1])) == ["model.npz: mask differs"]
  assert same_run.main([a, run("d", 0.50001, 1.0, [1, 0])]) == 1


def test_bf16_quality_table_sets_each_precision_beside_the_other():
  from benchmarks import bf16_quality
  rows = [{"precision": p, "seed": s, "domain_fid": fid, "legibility": 0.2,
           "seconds_total": 400.0, "seconds_per_round": spr}
          for p, fids, spr in (("float32", (20.0, 30.0, 40.0), 50.0),
                               ("bfloat16", (25.0, 35.0, 45.0), 45.0)) for s, fid in zip((0, 1, 2), fids)]
  md = bf16_quality.markdown(rows)
  assert "| float32 | 3 | 30.0 ± 10.0 (20.0, 30.0, 40.0) | 0.200 | 50.0 |" in md
  assert "| bfloat16 | 3 | 35.0 ± 10.0 (25.0, 35.0, 45.0) | 0.200 | 45.0 |" in md


def test_conv_layers_times_both_implementations_per_layer(tmp_path, monkeypatch):
  """The per-layer benchmark behind ``conv_impl="cpu"``: a row per layer and gradient set
  with each implementation's times (batch tiles where the columns exceed the tile size:
  here 16 images' worth of a 4x4x8 layer, so 4 tiles of 64), and the vmapped clients' rows,
  in its JSON and its tables."""
  from benchmarks import conv_layers
  from prism_jax import generator
  monkeypatch.setattr(conv_layers, "PAPER", ((4, 8, 8), (4, 8, 4)))
  monkeypatch.setattr(conv_layers, "DEFAULT", ((4, 8, 8),))
  monkeypatch.setattr(generator, "IM2COL_TILE_BYTES", 16 * 4 * 4 * 9 * 8 * 4)
  out = tmp_path / "conv.json"
  conv_layers.main([f"--out={out}"])
  result = json.loads(out.read_text())
  rows = result["paper_layers"]
  assert [r["kernel_grad"] for r in rows] == [False, True] * 2
  assert [r["tiles"] for r in rows] == [4, 4, 1, 1]   # fewer outputs than inputs: not im2col
  assert all(r["im2col_ms"] > 0 and r["winograd_ms"] > 0 for r in rows)
  assert rows[0]["tiled_ms"] > 0 and rows[2]["tiled_ms"] is None
  clients = result["default_layers_2_clients"][0]
  assert clients["layer"] == [4, 8, 8] and clients["tiles"] == 4
  assert clients["cpu_clients_ms"] > 0 and clients["cpu_clients_tiled_ms"] > 0
  md = conv_layers.markdown(result)
  assert f"| (4, 8, 8) | input | {rows[0]['im2col_ms']:.1f} | {rows[0]['tiled_ms']:.1f} (4) |" in md
  assert "| (4, 8, 4) | input, kernel |" in md and md.count(" - |") == 2


def test_run_seconds_sums_each_runs_rounds_and_reads_its_quality(tmp_path):
  """The before/after table: training seconds are the sum of the rounds' (evaluation rows
  without seconds left out), quality from summary.json, one row per named run."""
  from benchmarks import run_seconds
  for name, secs in (("a", (3.0, 2.0)), ("b", (1.0, 1.5))):
    d = tmp_path / name
    d.mkdir()
    rows = [{"round": 0, "domain_fid_fixed": 99.0}] + [{"round": i + 1, "seconds": s}
                                                        for i, s in enumerate(secs)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps(
        {"seconds_total": 10.0, "domain_fid_fixed": 20.0 + len(name), "legibility_fixed": 0.5}))
  out = tmp_path / "out.json"
  run_seconds.main([f"before={tmp_path / 'a'}", f"after={tmp_path / 'b'}", f"--out={out}"])
  result = json.loads(out.read_text())
  assert result["before"]["training_seconds"] == 5.0 and result["after"]["training_seconds"] == 2.5
  assert "| after | 1.0, 1.5 | 2 | 10 | 21.0 | 0.500 |" in run_seconds.markdown(result)
