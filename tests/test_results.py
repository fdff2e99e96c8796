"""experiments.results: runs a suite through the experiment modules and writes the report
from the run directories (smoke scale on a small tfds dataset written by the test)."""
import json
import os
import threading

import pytest

from experiments import report, results, suites
from prism_jax import tfds_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_suite_runs_on_tfds_data_and_writes_the_report(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  tfds_fixture.write("cifar10", data_dir, {"train": 160, "test": 80})
  monkeypatch.chdir(ROOT)
  runs, out, figs = tmp_path / "runs", tmp_path / "R.md", tmp_path / "figs"
  args = ["--suite=smoke", f"--runs_dir={runs}", f"--out={out}", f"--figures={figs}",
          f"--data_dir={data_dir}", "--only=cifar10-dirichlet-prism,fashion_mnist-iid-dp"]
  results.main(args)
  with open(runs / "cifar10-dirichlet-prism" / "summary.json") as f:
    summary = json.load(f)
  assert summary["rounds"] == 2 and summary["domain_fid_fixed"] > 0
  text = out.read_text()
  # The finished run is in the table with its measured numbers; the one whose data is not
  # prepared is listed with the command that prepares it.
  assert ("| cifar10 | dirichlet | PRISM | 0 | " + report._fmt(summary["domain_fid_fixed"])
          + " | " + report._fmt(summary["domain_fid_resampled"])) in text
  assert "fashion_mnist-iid-dp" in text and "tfds build fashion_mnist" in text
  assert (figs / "smoke_curves.png").exists() and (figs / "smoke_samples_dirichlet.png").exists()
  # A second call reuses the finished run instead of training again.
  results.main(args)
  with open(runs / "cifar10-dirichlet-prism" / "summary.json") as f:
    assert json.load(f)["seconds_total"] == summary["seconds_total"]


def _fake(name, split, label, **summary):
  base = dict(rounds=10, bits_up=100, bits_down=3200, bits_up_per_client=25,
              model_bytes=40, model_fraction_of_dense=0.03, seconds_total=60.0,
              num_weights=320)
  return {"run": suites.Run(name, "mnist", split, label=label),
          "summary": {**base, **summary}, "rows": [], "config": {"dataset": "mnist",
                                                                 "alpha": 0.005}}


def test_claims_are_computed_from_the_summaries():
  rs = [_fake("a", "dirichlet", "PRISM", domain_fid_fixed=50.0),
        _fake("b", "dirichlet", "PRISM w/o MADA", domain_fid_fixed=40.0),
        _fake("c", "dirichlet", "dense FedAvg", bits_up=3200, model_fraction_of_dense=1.0,
              domain_fid_fixed=20.0)]
  text = "\n".join(report.claims(rs))
  assert "uploads 96.9% fewer bits" in text and "held for the upload" in text
  # Total = up + down: 1 - 3300 / 6400 = 48.4%, which does not reach 60%.
  assert "48.4% lower (did not hold" in text
  assert "3.00% of the dense float32 generator: held" in text
  assert ("Dirichlet(0.005), 1 seed(s)**, final domain-FID: fixed mask 50 with MADA vs 40 "
          "without (MADA better on 0 of 1). MADA helps: did not hold") in text


def test_mada_verdict_over_seeds_reports_mean_spread_and_wins():
  fids = {("PRISM", 0): 30.0, ("PRISM", 1): 34.0, ("PRISM", 2): 50.0,
          ("PRISM w/o MADA", 0): 40.0, ("PRISM w/o MADA", 1): 44.0, ("PRISM w/o MADA", 2): 42.0}
  rs = []
  for (label, seed), fid in fids.items():
    r = _fake(f"{label}{seed}", "dirichlet", label, domain_fid_fixed=fid,
              domain_fid_resampled=fid - 5)
    r["run"] = suites.Run(f"{label}{seed}", "mnist", "dirichlet", label=label, seed=seed)
    rs.append(r)
  rs += [_fake(f"l25-{label}", "dirichlet", f"{label}, 25 local steps", domain_fid_fixed=fid)
         for label, fid in (("PRISM", 20.0), ("PRISM w/o MADA", 25.0))]
  line, longer = report.mada_verdict(rs)
  assert "Dirichlet(0.005), 25 local steps, 1 seed(s)**" in longer
  assert longer.endswith("(MADA better on 1 of 1). MADA helps: held at this scale.")
  # mean and sample std (sqrt(112) = 10.6) over the 3 seeds; MADA is better on seeds 0 and 1 only.
  assert "fixed mask 38 ± 11 with MADA vs 42 ± 2 without (MADA better on 2 of 3)" in line
  assert "resampled mask 33 ± 11 with MADA vs 37 ± 2 without" in line
  assert line.endswith("MADA helps: mixed at this scale.")


def test_rounds_and_bits_to_target_come_from_the_metrics_rows():
  r = _fake("a", "iid", "PRISM")
  r["rows"] = [{"round": 0, "domain_fid_fixed": 500.0},
               {"round": 1, "bits_up": 100, "bits_down": 3200},
               {"round": 2, "bits_up": 100, "coded_bits_up": 40, "bits_down": 3200,
                "domain_fid_fixed": 80.0}]
  [_, _, row] = report.to_target_table([r])
  # 200 and 100 first reached at round 2, after 3300 + 3240 bits; 50 and 30 never.
  assert row == "| iid | PRISM | 0 | 2, 6.54e+03 | 2, 6.54e+03 | not reached | not reached |"


def _dp_run(n, label, fid, eps=None):
  """A fake finished run of the dp suite with ``n`` clients per round."""
  r = _fake(f"{n}-{label}", "iid", label, domain_fid_fixed=fid,
            **({"dp_epsilon": eps, "dp_delta": 1e-5} if eps else {}))
  r["config"]["clients_per_round"] = n
  return r


def test_dp_verdict_finds_the_smallest_useful_number_of_clients():
  rs = [_dp_run(100, "PRISM (no DP)", 40.0), _dp_run(100, "PRISM + PBM, eps 10", 120.0, 9.9),
        _dp_run(1000, "PRISM (no DP)", 30.0), _dp_run(1000, "PRISM + PBM, eps 10", 55.0, 9.9),
        _dp_run(1000, "PRISM + PBM, eps 1", 300.0, 0.99)]
  text = "\n".join(report.dp_verdict(rs))
  assert "| 100 | PRISM + PBM, eps 10 | 9.9 (1.00e-05) | 120 | 3.00x |" in text
  assert "| 1,000 | PRISM + PBM, eps 10 | 9.9 (1.00e-05) | 55 | 1.83x |" in text
  assert "Verdict: the smallest number of clients per round" in text and "is 1,000." in text
  rs[3]["summary"]["domain_fid_fixed"] = 70.0
  assert "no PBM run with epsilon <= 10 stayed within 2x" in "\n".join(report.dp_verdict(rs))
  # A scale whose PBM runs have not finished is not counted as tested.
  text = "\n".join(report.dp_verdict(rs[:3]))
  assert "with up to 100 clients per round, no PBM run" in text
  assert "has finished at 1,000 clients per round" in text


def test_dp_suite_runs_pbm_beside_non_private_prism_at_each_scale():
  runs = suites.SUITES["dp"]()
  for n in suites.DP_CLIENTS:
    names = {r.name for r in runs if r.name.startswith(f"n{n}-")}
    assert {f"n{n}-prism", f"n{n}-pbm-eps1", f"n{n}-pbm-eps3", f"n{n}-pbm-eps10"} <= names
  assert len({r.label for r in runs}) == len(runs)   # the tables tell the scales apart
  pbm_run = next(r for r in runs if r.name == "n1000-pbm-eps10")
  overrides = dict(pbm_run.overrides)
  assert overrides["dp.mechanism"] == "pbm" and overrides["clients_per_round"] == 1000


def test_dp_verdict_withholds_judgement_when_no_dp_is_no_better_than_noise():
  rs = [_dp_run(100, "PRISM (no DP)", 130.0), _dp_run(100, "PRISM + PBM, eps 10", 131.0, 9.9),
        _dp_run(100, "PRISM, noise on theta, eps 10", 160.0, 10.0)]
  text = "\n".join(report.dp_verdict(rs))
  assert "Verdict: none yet (no verdict at 100 clients per round" in text


def _with_config(fakes):
  for r in fakes:
    r["config"].update(ngf=8, image_size=16, num_clients=100, clients_per_round=100,
                       rounds=10, local={"local_steps": 20, "batch_size": 32},
                       loss={"name": "mmd"}, features="pixels", eval={"num_samples": 100})
  return fakes


def test_report_has_no_empty_claims_section(tmp_path, monkeypatch):
  dp = _with_config([_dp_run(100, "PRISM (no DP)", 40.0),
                     _dp_run(100, "PRISM + PBM, eps 10", 120.0, 9.9)])
  other = _with_config([_fake("a", "dirichlet", "PRISM", domain_fid_fixed=50.0)])
  monkeypatch.setattr(report, "figures", lambda *a: [])
  for suite, fakes, has_claims in (("dp", dp, False), ("mnist_long", other, True)):
    runs = [r["run"] for r in fakes]
    monkeypatch.setattr(report, "_load", lambda _, run, f=fakes: next(
        (r for r in f if r["run"] == run), None))
    text = report.report(suite, runs, str(tmp_path), str(tmp_path / "R.md"),
                          str(tmp_path), {})
    assert ("## The paper's claims, checked here" in text) == has_claims, suite
    assert ("Final model size" in text) == has_claims


def test_results_md_gathers_the_dp_verdict_from_the_committed_dp_runs(tmp_path, monkeypatch):
  main = _with_config([_fake("a", "dirichlet", "PRISM", domain_fid_fixed=50.0)])
  dp = dict(zip(("n100-prism", "n100-pbm-eps10"), _with_config(
      [_dp_run(100, "PRISM (no DP)", 40.0), _dp_run(100, "PRISM + PBM, eps 10", 60.0, 9.9)])))
  loaded = []

  def load(runs_dir, run):
    loaded.append(runs_dir)
    return dp.get(run.name) if runs_dir == suites.COMMITTED_RUNS["dp"] else main[0]
  monkeypatch.setattr(report, "_load", load)
  monkeypatch.setattr(report, "figures", lambda *a: [])
  write = lambda suite: report.report(suite, [main[0]["run"]], "runs", str(tmp_path / "R.md"),
                                       str(tmp_path), {})
  text = write("mnist_long")
  assert "## Privacy: PBM against clients per round" in text
  assert "| 100 | PRISM + PBM, eps 10 | 9.9 (1.00e-05) | 60 | 1.50x |" in text
  assert "Verdict: the smallest number of clients per round" in text and "is 100." in text
  assert "## Privacy" not in write("mnist_cpu")   # only RESULTS.md gathers it
  dp.clear()                                         # no finished dp run: no section
  assert "## Privacy" not in write("mnist_long") and suites.COMMITTED_RUNS["dp"] in loaded


def test_parallel_runs_overlap_and_the_report_covers_the_whole_suite(tmp_path, monkeypatch):
  both_running = threading.Barrier(2, timeout=30)   # broken (an error) if run one at a time

  def run_one(run, runs_dir, data_dir, official=None):
    both_running.wait()
    return "ran"
  monkeypatch.setattr(results, "run_one", run_one)
  monkeypatch.setattr(report, "figures", lambda *a: [])
  out = tmp_path / "R.md"
  results.main(["--suite=dp", f"--runs_dir={tmp_path}", f"--out={out}", "--parallel=2",
                "--only=n100-prism,n100-pbm-eps10"])
  text = out.read_text()
  assert "- `n100-prism`: ran" in text and "- `n100-pbm-eps10`: ran" in text
  assert "- `n1000-pbm-eps1`: no finished run" in text   # not run, still in the report
  with pytest.raises(SystemExit, match="--parallel must be at least 1"):
    results.main(["--suite=dp", "--parallel=0", "--report_only"])
