"""DP mechanism (noise + clip on theta) and the dp-accounting accountant."""
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import dp


def test_noise_std_matches_sigma_and_clip_bounds(key):
  theta = {"a": jnp.full((200_000,), 0.5), "b": jnp.full((3, 100), 0.3)}
  out = dp.privatize(key, theta, noise_std=0.05, clip=0.001)
  noise = np.asarray(out["a"]) - 0.5
  assert abs(noise.std() - 0.05) < 0.05 * 0.02 and abs(noise.mean()) < 1e-3
  big = dp.privatize(key, theta, noise_std=10.0, clip=0.1)
  for leaf in jax.tree.leaves(big):
    assert float(leaf.min()) >= 0.1 and float(leaf.max()) <= 0.9
  # Heavy noise pushes all but P(|N(0, 10^2)| < 0.4) of the values onto the boundaries.
  on_edge = np.mean(np.isin(np.asarray(big["a"]), [np.float32(0.1), np.float32(0.9)]))
  assert on_edge == pytest.approx(1 - math.erf(0.4 / (10 * math.sqrt(2))), abs=0.003)


@pytest.mark.parametrize("rounds", [1, 10, 100])
def test_epsilon_matches_dp_accounting(rounds):
  d, sigma, delta = 10_000, 150.0, 1e-5
  acc = dp_accounting.rdp.RdpAccountant()
  for _ in range(rounds):
    acc.compose(dp_accounting.GaussianDpEvent(sigma / math.sqrt(d)))
  assert dp.epsilon(sigma, d, rounds, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-9)


def test_epsilon_grows_with_rounds_and_falls_with_noise():
  eps = [dp.epsilon(100.0, 10_000, r, 1e-5) for r in (1, 10, 100, 500)]
  assert all(a < b for a, b in zip(eps, eps[1:]))
  assert dp.epsilon(200.0, 10_000, 10, 1e-5) < eps[1]
  assert dp.epsilon(100.0, 10_000, 0, 1e-5) == 0.0
  assert math.isinf(dp.epsilon(0.0, 10_000, 5, 1e-5))
  pld = dp.epsilon(100.0, 10_000, 100, 1e-5, accountant="pld")
  assert 0.5 * eps[2] < pld <= eps[2] * 1.01     # PLD is tighter than RDP


def test_calibration_inverts_the_accountant():
  sigma = dp.calibrate_noise(9.8, 1e-5, 200, num_weights=50_000)
  assert dp.epsilon(sigma, 50_000, 200, 1e-5) == pytest.approx(9.8, rel=1e-3)
  assert dp.epsilon(sigma * 0.95, 50_000, 200, 1e-5) > 9.8


@pytest.mark.parametrize("call,match", [
    (lambda: dp.calibrate_noise(0.0, 1e-5, 10, 100), "epsilon must be > 0"),
    (lambda: dp.calibrate_noise(1.0, 1.0, 10, 100), r"delta must lie in \(0, 1\)"),
    (lambda: dp.epsilon(1.0, 100, 10, 0.0), r"delta must lie in \(0, 1\)"),
    (lambda: dp.validate(1.0, 0.5), r"clip must lie in \(0, 0.5\)"),
    (lambda: dp.validate(-1.0, 0.1), "noise_std must be >= 0"),
    (lambda: dp.epsilon(1.0, 10_000, 10, 1e-5, accountant="pld"), "use the 'rdp'"),
])
def test_bad_dp_settings(call, match):
  with pytest.raises(ValueError, match=match):
    call()
