"""The `official` suite: its runs, their commands, and RESULTS-official.md from run dirs."""
import json
import os

import pytest

from experiments import official_report, results, suites
from experiments.configs import overrides


def _write_run(runs_dir, name, fids, finished=True):
  d = os.path.join(runs_dir, name)
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"round": 0, "domain_fid_fixed": 1500.0}) + "\n")   # before training
    for r, (fixed, resampled) in fids.items():
      f.write(json.dumps({"round": r, "loss": 1.0}) + "\n")
      f.write(json.dumps({"round": r, "domain_fid_fixed": fixed,
                          "domain_fid_resampled": resampled}) + "\n")
  if finished:
    with open(os.path.join(d, "summary.json"), "w") as f:
      json.dump({}, f)


def test_suite_pairs_each_seed_and_mada_setting_across_implementations():
  runs = suites.SUITES["official"]()
  assert len(runs) == 2 * 2 * len(suites.OFFICIAL_SEEDS)
  assert [r.runner for r in runs[:2]] == ["prism_jax", "official"]   # both sides early
  keys = {(r.runner, dict(r.overrides)["mada"], r.seed) for r in runs}
  assert len(keys) == len(runs)
  config = overrides.load_config_file(suites.OFFICIAL_CONFIG)
  assert config.split == "dirichlet" and config.clients_per_round is None
  assert config.lambda_counts == "state_dict" and config.local.carry_optimizer


def test_commands_and_a_missing_official_repository(tmp_path):
  jax_run, off_run = suites.SUITES["official"]()[:2]
  cmd = results._command(jax_run, str(tmp_path / "a"), None)
  assert cmd[2] == "experiments.train" and "--config.mada=True" in cmd
  assert "skipped" in results._command(off_run, str(tmp_path / "b"), None)
  cmd = results._command(off_run, str(tmp_path / "b"), "/repo")
  assert cmd[2] == "benchmarks.official_run" and "--official=/repo" in cmd
  os.makedirs(tmp_path / "a")
  open(tmp_path / "a" / "config.json", "w").close()
  assert results._command(jax_run, str(tmp_path / "a"), None)[-1] == "--resume"


def test_report_tables_curves_and_verdicts(tmp_path):
  runs = suites.SUITES["official"]()
  runs_dir = str(tmp_path / "runs")
  fid = {("prism_jax", True): 60.0, ("prism_jax", False): 80.0,
         ("official", True): 62.0, ("official", False): 50.0}
  for run in runs:
    base = fid[(run.runner, dict(run.overrides)["mada"])] + 4 * run.seed
    _write_run(runs_dir, run.name, {5: (base + 100, base + 90), 10: (base, base - 5)})
  out = str(tmp_path / "RESULTS-official.md")
  text = official_report.report(runs, runs_dir, out, str(tmp_path / "fig"), {})
  assert os.path.exists(out) and os.path.exists(tmp_path / "fig" / "official_curves.png")
  assert "| prism_jax | yes | 2 | 62.0 ± 2.8 (60.0, 64.0) |" in text
  assert "| official | no | 2 | 52.0 ± 2.8 (50.0, 54.0) |" in text
  assert "**MADA in prism_jax** (fixed mask, 2 seed(s))" in text and "helps" in text
  assert "**MADA in official** (fixed mask, 2 seed(s))" in text and "hurts" in text
  # fixed-mask curves: round 10 of prism-jax with MADA is the mean of 60 and 64
  assert "| 10 | 62.0 (n=2) |" in text
  assert "with MADA** (fixed mask): the means differ by 2.0, within the larger seed range (4.0)" in text
  assert "without MADA** (fixed mask): the means differ by 30.0, beyond" in text


def test_report_before_any_run_finishes(tmp_path):
  runs = suites.SUITES["official"]()
  runs_dir = str(tmp_path / "runs")
  _write_run(runs_dir, runs[0].name, {5: (90.0, 80.0)}, finished=False)
  text = official_report.report(runs, runs_dir, str(tmp_path / "R.md"), str(tmp_path / "f"),
                                {runs[1].name: "skipped: no torch"})
  assert "s0: 5/20" in text and "no seed has finished both runs yet" in text
  assert f"`{runs[1].name}`: skipped: no torch" in text


@pytest.mark.parametrize("variant,steps", [("", 20), ("smoke", 2)])
def test_official_cpu_config(variant, steps):
  config = overrides.load_config_file(
      f"{suites.OFFICIAL_CONFIG}{':' + variant if variant else ''}")
  assert config.local.local_steps == steps and config.features == "cnn"
  assert config.loss.name == "gfmn" and config.loss.kwargs.learning_rate == 1e-5
  with pytest.raises(ValueError, match="unknown variant"):
    overrides.load_config_file(f"{suites.OFFICIAL_CONFIG}:big")


def test_report_reads_the_exported_masks_drawn_again(tmp_path):
  runs = suites.SUITES["official"]()
  runs_dir = str(tmp_path / "runs")
  for i, run in enumerate(runs):
    _write_run(runs_dir, run.name, {20: (60.0, 40.0)})
    with open(os.path.join(runs_dir, run.name, "fixed_draws.json"), "w") as f:
      json.dump({"domain_fid_fixed": [50.0 + i, 52.0 + i, 54.0 + i]}, f)
  text = official_report.report(runs, runs_dir, str(tmp_path / "R.md"), str(tmp_path / "f"), {})
  # prism_jax with MADA: runs 0 (seed 0) and 4 (seed 1): draws 50-54 and 54-58
  assert "| prism_jax | yes | 2 | 3 | 54.0 ± 2.8 | 52.0 (50.0-54.0); 56.0 (54.0-58.0) |" in text
  # official with MADA: runs 1 and 5, draws 51-55 and 55-59: prism-jax lower by 1.0
  assert "with MADA, prism-jax - official: -1.0 (standard error 1.6; within" in text
