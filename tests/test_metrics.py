"""FID against SciPy, PRDC against hand-counted balls, IS limits."""
import numpy as np
import pytest
import scipy.linalg

from prism_jax import metrics


def _scipy_fid(x, y):
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)


def test_fid_zero_for_identical_sets():
  x = np.random.default_rng(0).standard_normal((500, 16))
  assert abs(metrics.fid(x, x)) < 1e-6


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0)])
def test_fid_matches_scipy_on_gaussians(shift, scale):
  rng = np.random.default_rng(1)
  a = rng.standard_normal((16, 16))
  x = rng.standard_normal((800, 16)) @ a
  y = scale * rng.standard_normal((800, 16)) @ a + shift
  np.testing.assert_allclose(metrics.fid(x, y), _scipy_fid(x, y), rtol=1e-6, atol=1e-6)


def test_prdc_hand_computed():
  # Reals on a line at 0..5; with k=1 each real ball has radius 1.
  real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
  fake = np.array([[0.5], [0.6], [10.0], [10.5], [11.0], [11.2]])
  out = metrics.prdc(real, fake, k=1)
  # Fakes 0.5 and 0.6 lie in the balls of reals 0 and 1: precision 2/6.
  assert out["precision"] == pytest.approx(2 / 6)
  # Each of those two fakes sits in 2 real balls: density = 4 / (1 * 6).
  assert out["density"] == pytest.approx(4 / 6)
  # Coverage: reals whose nearest fake is within their radius: 0 and 1.
  assert out["coverage"] == pytest.approx(2 / 6)
  # Fake radii (k=1): 0.1, 0.1, 0.5, 0.5, 0.2, 0.2: only real 0 (0.5 from fake 0.5)? no:
  # |0 - 0.5| = 0.5 > 0.1 and |1 - 0.6| = 0.4 > 0.1, so no real is inside a fake ball.
  assert out["recall"] == 0.0


def test_prdc_identical_sets_are_perfect():
  x = np.random.default_rng(2).standard_normal((200, 8))
  out = metrics.prdc(x, x, k=5)
  assert out["precision"] == out["recall"] == out["coverage"] == 1.0
  with pytest.raises(ValueError, match="more than k=5"):
    metrics.prdc(x[:5], x)


def test_inception_score_limits():
  confident = np.eye(10)[np.arange(1000) % 10] * 50.0       # sure and evenly spread
  assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-3)
  assert metrics.inception_score(np.zeros((100, 10))) == pytest.approx(1.0)


def test_legibility_counts_confident_agreement_only():
  sure = lambda c: np.eye(10)[c] * 20.0          # probability ~1 for class c
  unsure = np.zeros((1, 10))                        # probability 0.1 for every class
  a = np.concatenate([sure([3, 5, 7]), unsure])
  b = np.concatenate([sure([3, 5, 1]), sure([2])])
  # sample 0, 1: both sure, same class; 2: both sure, classes differ; 3: one judge unsure.
  assert metrics.legibility(a, b) == pytest.approx(0.5)
  assert metrics.legibility(a, a) == pytest.approx(0.75)
  two_way = np.log(np.array([[0.85, 0.15] + [1e-9] * 8]))  # sure enough at 0.8, not at 0.9
  assert metrics.legibility(two_way, two_way, confidence=0.8) == 1.0
  assert metrics.legibility(two_way, two_way, confidence=0.9) == 0.0
