import jax
import pytest

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
