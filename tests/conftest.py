import os
import tempfile

# The test programs are tiny: XLA's compile time, not their run time, dominates the suite,
# and LLVM at optimisation level 0 compiles them 2-3x faster (same results up to float
# rounding). The Flower end-to-end test runs its deployment at the default level.
FAST_COMPILE = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

# Many tests compile the same tiny round; a session-wide persistent compilation cache (also
# used by the tests' subprocesses through the environment) compiles each program once.
_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                               tempfile.mkdtemp(prefix="prism-jax-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from prism_jax import client, features, generator, losses


@pytest.fixture
def tiny_model():
  """A 16x16 one-channel generator with 2 blocks: fast enough for every test."""
  return generator.ResNetGenerator(image_size=16, channels=1, nz=8, ngf=4)


@pytest.fixture
def tiny_objective(tiny_model):
  return client.Objective(tiny_model, features.pixels, losses.gaussian_mmd)


@pytest.fixture
def key():
  return jax.random.key(0)
