"""The Poisson binomial mechanism: rotation, unbiased estimate, and an accountant that
upper-bounds the exact Renyi divergence and approaches the Gaussian mechanism's."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from prism_jax import configure
from prism_jax import pbm


def _exact_renyi(alpha, p, q, others):
  """D_alpha between the sums Bern(p) + others and Bern(q) + others, by convolution."""
  dist = np.array([1.0])
  for pj in others:
    dist = np.convolve(dist, [1 - pj, pj])
  a, b = np.log(np.convolve(dist, [1 - p, p])), np.log(np.convolve(dist, [1 - q, q]))
  return special.logsumexp(alpha * a + (1 - alpha) * b) / (alpha - 1)


@pytest.mark.parametrize("d", [7, 4096, 5000])
def test_rotation_is_orthogonal_and_inverted(d):
  rot = pbm.rotation(jax.random.key(0), d, block=1024)
  x = jax.random.normal(jax.random.key(1), (d,))
  y = pbm.rotate(x, rot, block=1024)
  assert y.shape == (pbm.padded_size(d, 1024),) and y.shape[0] - d < 1024
  np.testing.assert_allclose(jnp.linalg.norm(y), jnp.linalg.norm(x), rtol=1e-5)
  np.testing.assert_allclose(pbm.unrotate(y, rot, d, block=1024), x, atol=1e-5)
  # A one-hot update is spread evenly: no rotated coordinate exceeds a few |x| / sqrt(n).
  e = jnp.zeros((d,)).at[d // 2].set(1.0)
  assert float(jnp.max(jnp.abs(pbm.rotate(e, rot, block=1024)))) <= 1 / math.sqrt(
      min(1024, y.shape[0])) + 1e-6


def test_sum_of_bits_gives_an_unbiased_mean_update():
  d, n, clip, b = 300, 4000, 1.0, 0.25
  c = pbm.coordinate_clip(clip, d, spread=4.0)
  rot = pbm.rotation(jax.random.key(0), d)
  updates = 0.02 * jax.random.normal(jax.random.key(1), (n, d)) + jnp.linspace(-0.03, 0.03, d)
  bits = jax.vmap(lambda k, u: pbm.encode(k, u, rot, clip, c, b))(
      jax.random.split(jax.random.key(2), n), updates)
  assert bits.dtype == jnp.bool_ and bits.shape == (n, pbm.padded_size(d))
  est = pbm.decode(jnp.sum(bits, 0, dtype=jnp.int32), n, rot, d, c, b)
  clipped = jax.vmap(lambda u: jnp.clip(pbm.rotate(pbm.clip_l2(u, clip), rot), -c, c))(updates)
  target = pbm.unrotate(jnp.mean(clipped, 0), rot, d)
  # Per rotated coordinate the estimate's std is at most c / (2 b sqrt(n)).
  z = (est - target) / (c / (2 * b * math.sqrt(n)))
  assert abs(float(jnp.mean(z))) < 4 / math.sqrt(d) and float(jnp.std(z)) < 1.1
  assert float(jnp.corrcoef(est, jnp.mean(updates, 0))[0, 1]) > 0.9


@pytest.mark.parametrize("n,b", [(2, 0.25), (6, 0.1), (30, 0.25), (120, 0.05)])
def test_coordinate_bound_upper_bounds_the_exact_divergence(n, b):
  """Any other participants' inputs, any pair of this client's inputs: exact <= bound."""
  rng = np.random.default_rng(n)
  for trial in range(6):
    others = 0.5 + b * (np.sign(rng.uniform(-1, 1, n - 1)) if trial < 2
                        else rng.uniform(-1, 1, n - 1))
    u, v = rng.uniform(-1, 1, 2)
    bound = pbm.coordinate_rdp(pbm.ORDERS, 0.5 + b * u, 0.5 + b * v, n, b)[:, 0]
    exact = np.array([_exact_renyi(a, 0.5 + b * u, 0.5 + b * v, others) for a in pbm.ORDERS])
    assert np.all(exact <= bound * (1 + 1e-9) + 1e-15), (trial, exact / bound)


def test_round_bound_covers_the_worst_coordinate_split_and_nears_gaussian():
  """kappa bounds every pair's divergence per squared distance (also off the grid), and for
  many participants the bound is within (1 + 2b) of the Gaussian mechanism with the sum's
  variance (it spends the part of each bit that is not a fair coin)."""
  n, b = 500, 0.1
  kappa = pbm.kappa(n, b)
  rng = np.random.default_rng(0)
  u, v = rng.uniform(-1, 1, 40), rng.uniform(-1, 1, 40)
  eps = pbm.coordinate_rdp(pbm.ORDERS, 0.5 + b * u, 0.5 + b * v, n, b)
  assert np.all(eps <= kappa[:, None] * (u - v) ** 2 * (1 + 1e-3))
  gauss = np.array(pbm.ORDERS) * b ** 2 / (2 * (n - 1) * (0.25 - b ** 2))
  ratio = kappa[:10] / gauss[:10]                   # orders up to 8
  assert np.all(ratio >= 1.0) and np.all(ratio <= (1 + 2 * b) * 1.05), ratio


def test_epsilon_grows_with_rounds_and_calibration_meets_the_target():
  n, d, delta = 200, 20_000, 1e-5
  c = pbm.coordinate_clip(1.0, d)
  e1, e10 = (pbm.epsilon(n, 0.01, 1.0, c, r, delta) for r in (1, 10))
  assert 0 < e1 < e10
  b = pbm.calibrate(5.0, delta, 20, n, 1.0, c)
  assert pbm.epsilon(n, b, 1.0, c, 20, delta) <= 5.0 < pbm.epsilon(n, b * 1.01, 1.0, c, 20,
                                                                   delta)
  more = pbm.calibrate(5.0, delta, 20, 4 * n, 1.0, c)    # more clients summed: less noise
  assert more > b


@pytest.mark.parametrize("kw,match", [
    (dict(b=0.3), "b must lie in"), (dict(b=0.0), "b must lie in"),
    (dict(clip_norm=0.0), "clip_norm C"), (dict(coord_clip=-1.0), "coordinate clip c"),
    (dict(participants=1), "2 participants")])
def test_impossible_parameters_are_refused(kw, match):
  args = dict(participants=10, b=0.1, clip_norm=1.0, coord_clip=0.1) | kw
  with pytest.raises(ValueError, match=match):
    pbm.rdp_per_round(**args)


def test_too_few_clients_for_the_target_is_refused():
  with pytest.raises(ValueError, match="sum more clients per round"):
    pbm.calibrate(1.0, 1e-5, 500, 3, 1.0, pbm.coordinate_clip(1.0, 1_000_000))


def test_pbm_trains_end_to_end_at_the_calibrated_epsilon_and_resumes_exactly(
    tmp_path, monkeypatch):
  from experiments.configs import mnist_cpu
  from prism_jax import checkpoint, runlog, train
  c = mnist_cpu.get_config("mmd")
  c.image_size, c.nz, c.ngf, c.num_clients, c.clients_per_round = 16, 16, 4, 4, 4
  c.local.local_steps, c.local.batch_size, c.rounds = 4, 16, 2
  c.eval.every, c.sample_every, c.checkpoint_every = 0, 2, 1
  c.dp.mechanism, c.dp.epsilon = "pbm", 50.0
  summary = train.train(c, str(tmp_path / "pbm"))
  n = summary["num_weights"]
  assert summary["bits_up_per_client"] == pbm.padded_size(n) < 1.06 * n
  assert 45.0 < summary["dp_epsilon"] <= 50.0 and math.isfinite(summary["final_loss"])

  def killed_at_2(self, r, m):   # after round 1's checkpoint, before round 2's
    if r == 2:
      raise KeyboardInterrupt("simulated kill")
  monkeypatch.setattr(runlog.Progress, "update", killed_at_2)
  with pytest.raises(KeyboardInterrupt):
    train.train(c, str(tmp_path / "part"))
  monkeypatch.undo()
  assert train.train(c, str(tmp_path / "part"), resume=True)["resumed_at"] == 1
  final = [checkpoint.manager(str(tmp_path / d / "checkpoints")).restore(2)
           for d in ("pbm", "part")]   # the PBM noise and rotation replay exactly
  assert len(jax.tree.leaves(final[0])) == len(jax.tree.leaves(final[1])) > 0
  for x, y in zip(*map(jax.tree.leaves, final)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="not both"):
    c.dp.b = 0.1
    configure.build(c)


def test_the_compiled_server_step_computes_the_new_scores_once():
  """PBMRule.aggregate needs the new scores for MADA's lambda and apply rebuilds them from
  the broadcast (as clients do): in one jitted server step XLA merges the two, so the step
  costs about aggregate alone, not aggregate plus another decode."""
  import functools

  from prism_jax import algorithm, client, features, generator, losses, masking, rules
  from prism_jax import round as rnd
  model = generator.ResNetGenerator(16, 1, 8, 4)
  n = masking.num_weights(jax.eval_shape(lambda: generator.init_weights(model, 0)))
  prism = algorithm.Prism(client.Objective(model, features.pixels, losses.gaussian_mmd),
                          client.LocalConfig(local_steps=1, batch_size=4), num_clients=3,
                          rule=rules.PBMRule(mechanism=pbm.Mechanism.for_model(0.25, 0.05, n)))
  state = algorithm.init_state(model, 0, jax.random.key(0), prism=prism)
  uploads, rot = jnp.zeros((3, pbm.padded_size(n)), bool), prism.rule.rotation(jax.random.key(1))

  def flops(f, *args):
    cost = jax.jit(f).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]
  step = flops(functools.partial(rnd.server_step, prism), jax.random.key(2), state, uploads,
               jnp.ones(3), rot)
  aggregate = flops(lambda s, u, r: prism.rule.aggregate(jax.random.key(2), s, u, jnp.ones(3),
                                                         3, r), state.scores, uploads, rot)
  decode = flops(lambda s, c, r: prism.rule._new(s, c, 3, r), state.scores,
                 jnp.zeros(pbm.padded_size(n), jnp.int32), rot)
  assert step < aggregate + 0.5 * decode, (step, aggregate, decode)
