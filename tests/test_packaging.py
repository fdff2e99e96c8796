"""Packaging: compatible ranges in setup.cfg, exact versions in constraints.txt, and the
README's test command is the one CI runs."""
import configparser
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _version(v: str) -> tuple:
  return tuple(int(x) for x in v.split("."))


def test_setup_declares_ranges_and_constraints_pin_versions_inside_them():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  reqs = cfg["options"]["install_requires"].split() + [
      r for extra in cfg["options.extras_require"].values() for r in extra.split()]
  assert not [r for r in reqs if "==" in r], "exact pins belong in constraints.txt"
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    pins = dict(l.strip().split("==") for l in f if "==" in l and not l.startswith("#"))
  for req in reqs:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?>=([0-9.]+)", req)
    if m and m.group(1) in pins:
      assert _version(pins[m.group(1)]) >= _version(m.group(2)), req
  assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"} <= set(pins)


def test_readme_test_command_is_the_ci_command():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = [l for l in f if l.startswith("pip install")][0].strip()
  strip = lambda cmd: cmd.replace(" -q", "")   # noqa: E731
  assert strip(ci) in readme and "-c constraints.txt" in ci
