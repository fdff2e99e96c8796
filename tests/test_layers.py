"""The package's layering, read from the source (``ast``): every module sits in a layer and
imports only from its own layer or those below; there is no import circle; the deployment
does not reach into the training loop; functions stay short enough to read."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "prism_jax"

# Lowest first. A new module must be placed here (the test names it otherwise).
LAYERS = {
    "data": ("data", "partition", "tfds_fixture", "cache", "checkpoint", "communication",
             "metrics", "multihost", "runlog", "visualize", "inception"),
    "masking/generator": ("masking", "generator", "vgg", "export", "coding", "classifiers"),
    "features/losses": ("features", "losses", "embedders", "evaluation", "dp", "pbm"),
    "client": ("client",),
    "server rules": ("server", "baselines", "rules", "downlink"),
    "round": ("algorithm", "sharding", "round"),
    "train/flower": ("configure", "rundir", "client_data", "train", "flower",
                     "flower.keys", "flower.wire", "flower.deployment", "flower.node",
                     "flower.server", "flower.worker"),
}
LEVEL = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def _modules() -> dict[str, list[str]]:
  """Module -> the package modules it imports (at the top or inside functions)."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE).with_suffix("")
    name = ".".join(p for p in rel.parts if p != "__init__")
    if not name:
      continue
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prism_jax"):
        if node.module == "prism_jax":
          deps |= {a.name for a in node.names}
        else:
          deps.add(node.module.removeprefix("prism_jax."))
      elif isinstance(node, ast.Import):
        deps |= {a.name.removeprefix("prism_jax.") for a in node.names
                 if a.name.startswith("prism_jax.")}
    out[name] = sorted(deps - {name})
  return out


MODULES = _modules()


def test_every_module_has_a_layer():
  assert sorted(set(MODULES) - set(LEVEL)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
  upward = [d for d in MODULES[module] if LEVEL[d] > LEVEL[module]]
  assert not upward, f"{module} (layer {LEVEL[module]}) imports higher layers: {upward}"


def test_no_import_circle():
  state = {}

  def visit(m, path):
    if state.get(m) == "open":
      raise AssertionError(f"import circle: {' -> '.join(path + [m])}")
    if state.get(m) == "done":
      return
    state[m] = "open"
    for d in MODULES[m]:
      visit(d, path + [m])
    state[m] = "done"

  for m in MODULES:
    visit(m, [])


def test_the_deployment_does_not_import_the_training_loop():
  def reaches(m, seen):
    for d in MODULES[m]:
      if d not in seen:
        seen.add(d)
        reaches(d, seen)
    return seen
  for m in MODULES:
    if m.startswith("flower"):
      assert "train" not in reaches(m, set()), m


def test_functions_are_short():
  """None over 80 lines; none over 60 in the round, whose step reads like Algorithm 1."""
  long = []
  for path in PACKAGE.rglob("*.py"):
    limit = 60 if path.name == "round.py" else 80
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > limit:
          long.append(f"{path.name}:{node.name} ({n} lines)")
  assert not long


def test_no_method_branches_in_the_round_the_loop_or_the_deployment():
  """They call the server's rule (prism_jax.rules), never ask which method it is."""
  files = [PACKAGE / "round.py", PACKAGE / "train.py", *(PACKAGE / "flower").glob("*.py")]
  hits = [f"{f.name}:{i}" for f in files
          for i, line in enumerate(f.read_text().splitlines(), 1)
          if "method ==" in line or "method !=" in line or ".pbm is" in line]
  assert not hits
