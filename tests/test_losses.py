import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prism_jax import losses


def _plain(name):
  fl = losses.get_loss(name)
  assert fl.real == "batch" and fl.init(4) == ()
  return lambda r, f: fl.apply(r, f, ())[0]


# edge_w2 compares pixel steps, which a constant shift leaves as they are (tested below).
@pytest.mark.parametrize("name", sorted(set(losses.LOSSES) - {"edge_w2"}))
def test_zero_for_identical_larger_for_shifted(name):
  loss = _plain(name)
  # Pixel-like scale: per-feature std 0.3, as images in [-1, 1].
  x = 0.3 * jax.random.normal(jax.random.key(0), (32, 16))
  y = 0.3 * jax.random.normal(jax.random.key(1), (32, 16))
  same = loss(x, x)
  fresh = loss(x, y)             # same distribution, other samples
  shifted = loss(x, y + 0.5)     # other distribution
  assert abs(float(same)) < 1e-5
  assert float(shifted) > 2 * float(fresh) > 0


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_finite_gradients(name):
  loss = _plain(name)
  x = jax.random.normal(jax.random.key(0), (16, 9))       # 3 x 3 images for edge_w2
  g = jax.grad(lambda y: loss(x, y))(x + 0.5 * jax.random.normal(jax.random.key(1), x.shape))
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g).sum()) > 0


def test_moment_matching_hand_computed():
  real = jnp.array([[0.0, 1.0], [2.0, 3.0]])   # mean (1, 2), var (1, 1)
  fake = jnp.array([[1.0, 1.0], [1.0, 1.0]])   # mean (1, 1), var (0, 0)
  # |(0, 1)|^2 + |(1, 1)|^2 = 1 + 2
  np.testing.assert_allclose(losses.moment_matching(real, fake), 3.0)


def test_gaussian_mmd_hand_computed():
  real, fake = jnp.array([[0.0]]), jnp.array([[1.0]])
  # k(x,x) = 1; k(x,y) = exp(-1 / b); MMD^2 = 2 - 2 exp(-1/b), one bandwidth b = 2.
  np.testing.assert_allclose(losses.gaussian_mmd(real, fake, bandwidths=(2.0,)),
                             2 - 2 * np.exp(-0.5), rtol=1e-6)


def test_energy_distance_hand_computed_and_zero_gradient_at_equality():
  real, fake = jnp.array([[0.0, 0.0], [3.0, 4.0]]), jnp.array([[0.0, 0.0], [0.0, 0.0]])
  # |x - y| over pairs: real-fake 0, 0, 5, 5 -> mean 2.5; real-real 0, 5, 5, 0 -> 2.5;
  # fake-fake 0. Per-feature units: / sqrt(2). 2 * 2.5 - 2.5 - 0 = 2.5.
  np.testing.assert_allclose(losses.energy_distance(real, fake), 2.5 / np.sqrt(2), rtol=1e-5)
  x = jax.random.normal(jax.random.key(0), (8, 3))
  g = jax.grad(lambda y: losses.energy_distance(x, y))(x)
  assert float(jnp.abs(g).max()) < 1e-6     # the minimum: no noise from the diagonal


def test_sinkhorn_hand_computed():
  # Two points each, far apart relative to eps: the plan is the assignment x_i -> y_i, and
  # the entropic terms (eps log 2 in each OT) cancel in the divergence, leaving the mean
  # matched cost 0.2^2; its gradient is P_ii * 2 (y_i - x_i) = 0.5 * 2 * 0.2 per point.
  x, y = jnp.array([[0.0], [1.0]]), jnp.array([[0.2], [1.2]])
  loss = lambda y: losses.sinkhorn_divergence(x, y, eps=1e-3)
  np.testing.assert_allclose(loss(y), 0.04, rtol=1e-4)
  np.testing.assert_allclose(jax.grad(loss)(y), [[0.2], [0.2]], rtol=1e-4)


def test_sinkhorn_gradient_is_the_values_derivative():
  # The plan is held constant in the gradient (envelope theorem): at convergence that is
  # the derivative of the value, checked by central differences.
  x = jax.random.normal(jax.random.key(0), (6, 3))
  y = jax.random.normal(jax.random.key(1), (5, 3)) + 0.5
  loss = lambda y: losses.sinkhorn_divergence(x, y, eps=0.5, iters=300)
  g = jax.grad(loss)(y)
  h = 1e-2
  e = jnp.zeros_like(y).at[2, 1].set(h)
  np.testing.assert_allclose(g[2, 1], (loss(y + e) - loss(y - e)) / (2 * h), rtol=2e-2)


def test_sinkhorn_solves_its_three_problems_in_one_loop_as_apart():
  # Equal batch sizes stack OT(x, y), OT(x, x), OT(y, y) into one loop: the same values and
  # gradient as the three problems solved apart, unrolled or not.
  x = jax.random.normal(jax.random.key(0), (6, 3))
  y = jax.random.normal(jax.random.key(1), (6, 3)) + 0.5
  ot = lambda a, b: losses._entropic_ot(a, b, eps=0.1, iters=50, cost="sq")  # noqa: E731
  apart = lambda y: ot(x, y) - 0.5 * (ot(x, x) + ot(y, y))  # noqa: E731
  for unroll in (1, True):
    loss = lambda y: losses.sinkhorn_divergence(x, y, eps=0.1, iters=50, unroll=unroll)  # noqa: E731
    np.testing.assert_allclose(loss(y), apart(y), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(loss)(y), jax.grad(apart)(y), rtol=1e-4, atol=1e-7)


def test_sinkhorn_l1_cost_and_bad_parameters():
  # The same assignment with the absolute cost: mean matched cost |0.2|, gradient 0.5 * sign.
  x, y = jnp.array([[0.0], [1.0]]), jnp.array([[0.2], [1.2]])
  loss = lambda y: losses.sinkhorn_divergence(x, y, eps=1e-3, cost="l1")
  np.testing.assert_allclose(loss(y), 0.2, rtol=1e-4)
  np.testing.assert_allclose(jax.grad(loss)(y), [[0.5], [0.5]], rtol=1e-4)
  with pytest.raises(ValueError, match="sinkhorn cost must be 'sq' or 'l1', got 'l3'"):
    losses.sinkhorn_divergence(x, y, cost="l3")
  with pytest.raises(ValueError, match="sinkhorn eps must be > 0, got 0"):
    losses.sinkhorn_divergence(x, y, eps=0)


def test_marginal_w2_compares_sorted_values_only():
  real = jnp.array([[-1.0, 1.0], [-1.0, -1.0]])
  # The same multiset of values in other places: 0, whatever the layout.
  np.testing.assert_allclose(losses.marginal_w2(real, real[::-1, ::-1]), 0.0)
  # Sorted: (-1, -1, -1, 1) vs (0, 0, 0, 0) -> mean of 1, 1, 1, 1.
  np.testing.assert_allclose(losses.marginal_w2(real, jnp.zeros((2, 2))), 1.0)


def test_edge_w2_compares_pixel_steps_and_refuses_non_square_features():
  step = jnp.array([[-1.0, -1.0, 1.0, 1.0]])        # one 2 x 2 image: a hard vertical edge
  ramp = jnp.array([[0.0, 0.0, 0.0, 0.0]])
  # Steps (rows then columns): real (2, 2, 0, 0) sorted (0, 0, 2, 2); flat (0, 0, 0, 0).
  np.testing.assert_allclose(losses.edge_w2(step, ramp), 2.0)
  # The same edge elsewhere (transposed image) has the same steps: 0.
  np.testing.assert_allclose(losses.edge_w2(step, jnp.array([[-1.0, 1.0, -1.0, 1.0]])), 0.0)
  with pytest.raises(ValueError, match="edge_w2 needs square single-channel images, got 6"):
    losses.edge_w2(jnp.zeros((2, 6)), jnp.zeros((2, 6)))


def test_strided_w2_compares_a_subsample_of_the_pooled_values():
  real, fake = (jax.random.uniform(jax.random.key(i), (64, 256)) / (i + 1) for i in range(2))
  flat = lambda x: x.reshape(-1)[::7]   # noqa: E731
  np.testing.assert_allclose(losses.marginal_w2(real, fake, stride=7),
                             jnp.mean(jnp.square(jnp.sort(flat(real)) - jnp.sort(flat(fake)))),
                             rtol=1e-6)
  # A subsample of the same histograms: close to the full comparison.
  np.testing.assert_allclose(losses.marginal_w2(real, fake, stride=7),
                             losses.marginal_w2(real, fake), rtol=0.05)
  np.testing.assert_allclose(losses.edge_w2(real, fake, stride=13), losses.edge_w2(real, fake),
                             rtol=0.05)
  with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
    losses.marginal_w2(real, fake, stride=0)


def test_weighted_sum_of_named_terms():
  fl = losses.get_loss("sum", sinkhorn={"eps": 0.05}, marginal_w2={"weight": 3.0})
  x = jax.random.normal(jax.random.key(0), (8, 5))
  y = jax.random.normal(jax.random.key(1), (8, 5)) + 0.2
  want = losses.sinkhorn_divergence(x, y, eps=0.05) + 3.0 * losses.marginal_w2(x, y)
  np.testing.assert_allclose(fl.apply(x, y, ())[0], want, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown term 'wasserstein'"):
    losses.get_loss("sum", wasserstein={})
  with pytest.raises(ValueError, match="needs at least one term"):
    losses.get_loss("sum")


def test_unknown_loss():
  with pytest.raises(ValueError, match="unknown loss 'wasserstein'"):
    losses.get_loss("wasserstein")


def _gfmn_setup(lr=1e-5):
  fl = losses.get_loss("gfmn", learning_rate=lr)
  fake = jax.random.normal(jax.random.key(0), (64, 6))
  real_stats = (jnp.arange(6.0) - 2.5, jnp.linspace(0.5, 2.0, 6))
  return fl, fake, real_stats


def test_gfmn_first_step_is_adams_sign_step():
  fl, fake, real_stats = _gfmn_setup()
  assert fl.real == "stats"
  state = fl.init(6)
  np.testing.assert_array_equal(state.v_mean, 0.0)
  loss, state = fl.apply(real_stats, fake, state)
  mu_f, var_f = jnp.mean(fake, 0), jnp.var(fake, 0, ddof=1)
  # Adam's first step is -lr * g / |g| with g = grad of mean((v - gap)^2) = -2 gap / D.
  np.testing.assert_allclose(state.v_mean, 1e-5 * jnp.sign(real_stats[0] - mu_f), rtol=1e-3)
  np.testing.assert_allclose(state.v_var, 1e-5 * jnp.sign(real_stats[1] - var_f), rtol=1e-3)
  # The generator loss is the projection on the updated moving averages.
  expect = state.v_mean @ (real_stats[0] - mu_f) + state.v_var @ (real_stats[1] - var_f)
  np.testing.assert_allclose(loss, expect, rtol=1e-5)


def test_gfmn_moving_average_tracks_the_gap_and_zero_for_equal_stats():
  fl, fake, real_stats = _gfmn_setup(lr=1e-2)
  state = fl.init(6)
  step = jax.jit(fl.apply)
  for _ in range(3000):
    _, state = step(real_stats, fake, state)
  gap = real_stats[0] - jnp.mean(fake, 0)
  np.testing.assert_allclose(state.v_mean, gap, atol=2e-2)
  # Equal statistics: zero loss whatever the moving averages hold.
  equal = (jnp.mean(fake, 0), jnp.var(fake, 0, ddof=1))
  np.testing.assert_allclose(fl.apply(equal, fake, state)[0], 0.0, atol=1e-5)
  # Its gradient moves the fake mean along the tracked gap.
  g = jax.grad(lambda f: fl.apply(real_stats, f, state)[0])(fake)
  assert float(jnp.dot(-g.sum(0), gap)) > 0


def test_feature_stats_and_their_written_out_gradient_equal_mean_and_var():
  """The batch sums as matrix-vector products and the hand-written gradient: the values and
  the gradient of any function of them equal autodiff of ``jnp.mean`` / ``jnp.var``, also
  under ``vmap`` (clients) and at a non-zero mean."""
  feats = 3.0 + jax.random.normal(jax.random.key(0), (2, 7, 50))
  v = jax.random.normal(jax.random.key(1), (2, 50))

  def loss(stats):
    return lambda f, v: jnp.sum(v * stats(f)[0]) + jnp.sum(jnp.sin(stats(f)[1]))
  ref = lambda f: (jnp.mean(f, 0), jnp.var(f, 0, ddof=1))   # noqa: E731
  chex.assert_trees_all_close(jax.vmap(losses.feature_stats)(feats), jax.vmap(ref)(feats),
                              rtol=1e-5)
  got, want = (jax.vmap(jax.grad(loss(s)))(feats, v) for s in (losses.feature_stats, ref))
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(want).max()) > 0.1
