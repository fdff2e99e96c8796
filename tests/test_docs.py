"""The README and docs/: the site builds without a broken link, the code examples run, the
headline table is the one generated from the committed runs, the README stays one screen."""
import pathlib
import re
import subprocess
import sys

import pytest

from experiments import headline

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(path: pathlib.Path) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.M | re.S)


def test_site_builds_strict(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                        "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "site" / "reference" / "index.html").exists()


@pytest.mark.parametrize("page", [p for p in PAGES if _python_blocks(p)],
                         ids=lambda p: p.name)
def test_code_examples_run(page, tmp_path, monkeypatch):
  """A page's blocks run in order in one namespace, as a reader would paste them."""
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__doc_example__"}
  for block in _python_blocks(page):
    exec(compile(block, str(page), "exec"), namespace)   # noqa: S102


def test_readme_headline_table_is_generated():
  readme = (ROOT / "README.md").read_text()
  assert headline.table(str(ROOT)) in readme, "run: python -m experiments.headline --write"


def test_readme_is_one_screenful_and_its_links_resolve():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) < 250
  for target in re.findall(r"\]\(([^)#]+)\)", readme):
    if not target.startswith("http"):
      assert (ROOT / target).exists(), target


def test_no_page_cites_a_readme_section_that_moved():
  """Code and docs point to docs/ pages, not to README sections that are gone."""
  stale = []
  for path in [*ROOT.glob("prism_jax/**/*.py"), *ROOT.glob("experiments/**/*.py")]:
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if re.search(r"README, \"", line):
        stale.append(f"{path.relative_to(ROOT)}:{i}")
  assert not stale


def test_performance_page_holds_the_measured_official_comparison():
  import json

  from benchmarks import vs_official
  result = json.loads((ROOT / "benchmarks" / "results" / "vs_official.json").read_text())
  page = (ROOT / "docs" / "performance.md").read_text()
  assert vs_official.markdown(result).strip() in page


def test_performance_page_holds_the_measured_bf16_quality_table():
  table = (ROOT / "benchmarks" / "results" / "bf16_quality.md").read_text().strip()
  assert table in (ROOT / "docs" / "performance.md").read_text()


def test_performance_page_holds_the_measured_convolution_and_default_run_tables():
  """Each table of the CPU-step section is its benchmark's JSON as the benchmark prints it."""
  import json

  from benchmarks import conv_layers, run_seconds
  page = (ROOT / "docs" / "performance.md").read_text()
  results = ROOT / "benchmarks" / "results"
  for module, name in ((conv_layers, "conv_layers"), (run_seconds, "default_before_after"),
                       (run_seconds, "default_seeds")):
    table = module.markdown(json.loads((results / f"{name}.json").read_text())).strip()
    assert f"<!-- {name} -->\n{table}\n<!-- /{name} -->" in page
