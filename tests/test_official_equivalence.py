"""prism-jax's paper config against the official PRISM code, on identical inputs.

The goldens (``tests/goldens/official-<size>-<row>.npz``) hold what the official PyTorch
code computed from the inputs that :mod:`benchmarks.official_goldens` draws (and that these
tests draw again the same way): the generated images, the VGG19-BN features, the loss, the
score gradient, the scores after 1, 2 and 5 local Adam steps (two ``local_train`` calls,
optimizer kept), the GFMN nets, the real-feature statistics and the server step with and
without MADA. Tolerances (float32, two frameworks, :data:`TOLERANCES`): images atol 1e-4;
features, loss, statistics and the GFMN nets rtol 1e-3; the score gradient and the
updates, relative norm errors and fractions of coordinates off by more than 1e-3, as loose
as rounding makes them (see the comment there); server scores atol 1e-4. The local steps
replay the golden's masks (rounding would otherwise flip a few bits and the trajectories
part). The last tests switch one official behaviour off and check that the comparison then
fails.
Regenerate: ``python -m benchmarks.official_goldens --official=PATH`` (docs/paper-fidelity.md).
"""
import dataclasses

import jax
import numpy as np
import pytest

from benchmarks import official_goldens as G
from prism_jax import generator, server

SMALL = [pytest.param("small", row, id=f"small-{row}") for row in G.ROWS]
PAPER = [pytest.param("paper", row, id=f"paper-{row}", marks=pytest.mark.slow)
         for row in G.ROWS]


@dataclasses.dataclass
class Side:
  golden: dict
  prism: object
  weights: object
  state: object
  stats: tuple
  steps: list
  masks: list


_SIDES = {}


@pytest.fixture(scope="module")
def side(tmp_path_factory):
  """``side(size, row, flip=())``: prism-jax's run on a golden's inputs (cached per module);
  ``flip``: config entries set afterwards, ``(("local.estimator", "ste"),)``."""
  def get(size, row, flip=()):
    key = (size, row, flip)
    if key not in _SIDES:
      with np.load(G.golden_path(size, row)) as f:
        golden = {k: f[k] for k in f.files}
      prism, weights, state = G.setup(size, row, str(tmp_path_factory.getbasetemp()), flip)
      stats = G.real_stats(prism, golden["images_u8"])
      masks = G.unpack_masks(golden["masks"], state.scores)
      _SIDES[key] = Side(golden, prism, weights, state, stats,
                         G.local_training(prism, weights, state, stats,
                                          seed=int(golden["step_seed"]), masks=masks), masks)
    return _SIDES[key]
  yield get
  _SIDES.clear()


def rel(got, want) -> float:
  return float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))


def first_step(s: Side):
  """Images, features, loss and score gradient of the first local step."""
  key = G.step_keys(int(s.golden["step_seed"]))[0][0]
  z, _ = G.draws(s.prism, s.state.scores, key)
  obj = s.prism.objective
  images = generator.generate(obj.model, s.weights, s.state.scores, z, given=s.masks[0])
  feats = obj.features.apply_fake(obj.features.params, images)
  local = jax.tree.map(lambda x: x[0], s.state.local_states)
  (loss, _), grad = jax.jit(jax.value_and_grad(obj, has_aux=True), static_argnums=6)(
      s.state.scores, s.weights, s.stats, jax.random.split(key)[1], obj.features.params,
      local.loss, s.prism.local.batch_size, s.masks[0])
  return images, feats, loss, grad


def off_fraction(got, want) -> float:
  return float(np.mean(np.abs(np.asarray(got) - want) > 1e-3))


def errors(s: Side) -> dict:
  """Each quantity's error against the golden (relative norm errors unless named)."""
  g = s.golden
  images, feats, loss, grad = first_step(s)
  fidx, idx = g["feature_index"], g["score_index"]
  f = np.asarray(feats)[:, fidx]
  e = {"images_max_abs": float(np.abs(np.asarray(images) - g["images"]).max()),
       "features": rel(f, g["feats"]),
       "features_max_rel": float(np.max(np.abs(f - g["feats"])) / np.abs(g["feats"]).max()),
       "loss": abs(float(loss) - float(g["loss"])) / abs(float(g["loss"])),
       "grad": rel(G.flat(grad)[idx], g["grad"])}
  s0 = G.flat(s.state.scores)
  for t in (1, 2, 5):
    update = (G.flat(s.steps[t - 1].scores) - s0)[idx]
    e[f"update{t}"] = rel(update, g[f"update{t}"])
    e[f"update{t}_off"] = off_fraction(update, g[f"update{t}"])
  last = s.steps[-1].loss_state
  for name in ("v_mean", "v_var"):
    e[name] = rel(np.asarray(getattr(last, name))[fidx], g[name])
  if "real_mean" in g:
    for name, got in zip(("real_mean", "real_var"), s.stats):
      e[name] = rel(np.asarray(got)[fidx], g[name])
  return e


# Rounding routes a gradient wherever a ReLU's input or a max-pool window's two largest
# values lie within rounding of a tie. prism-jax against itself at two LLVM optimisation
# levels (0, as the tests compile, and the default) differs by 5.5e-3 in the small VGG19
# row's score gradient on the same inputs, as much as it differs from the official code at
# level 0 (at the default level: 4e-6). Adam's first steps are nearly sign(gradient), so the
# coordinates whose gradients lie near 0 flip: measured at level 0 on the small VGG19 row,
# update after 1 / 2 / 5 steps 6.6e-2 / 4.6e-2 / 4.0e-3 (off fraction 1.8e-3 / 2.0e-2 /
# 5.3e-2); at the default level 6.9e-5 / 4.8e-5 / 1.2e-3. The bounds leave 2-3x room over
# level 0; every behaviour switched off below lands 50-7,600x beyond them.
# At the paper size (1-5 max-pool near ties per step against none in the small goldens)
# the fractions of coordinates off by more than 1e-3 after 2 and 5 steps, measured at level
# 0, are 1.2e-2 / 2.7e-3 (pixels) and 0.10 / 0.25 (VGG19) while the relative norm errors stay
# at 1.5e-2 / 1.2e-3 and 6.4e-2 / 8.2e-3: there only the norms are bounded after step 1.
TOLERANCES = {"images_max_abs": 1e-4, "features": 1e-3, "features_max_rel": 1e-3,
              "loss": 1e-3, "grad": 2e-2, "update1": 0.15, "update1_off": 5e-3,
              "update2": 0.1, "update2_off": 5e-2, "update5": 5e-2, "update5_off": 0.15,
              "v_mean": 1e-3, "v_var": 1e-3, "real_mean": 1e-3, "real_var": 1e-3}
PAPER_TOLERANCES = {**TOLERANCES, "update1_off": 2e-2, "update2_off": 1.0, "update5_off": 1.0}


def beyond(e: dict, tolerances: dict = TOLERANCES) -> dict:
  return {k: v for k, v in e.items() if not v <= tolerances[k]}


@pytest.mark.parametrize("size,row", SMALL + PAPER)
def test_local_training_equals_the_official_client(side, size, row):
  e = errors(side(size, row))
  print(f"{size}/{row}: " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()))
  over = beyond(e, PAPER_TOLERANCES if size == "paper" else TOLERANCES)
  assert not over, f"beyond tolerance: {over}"


def server_side(s: Side, lambda_counts: str = "state_dict"):
  """prism-jax's server step on the golden's uploads: scores without MADA, with MADA at the
  given lambda and at its own lambda from the given masks; and that lambda."""
  cfg = dataclasses.replace(s.prism.rule.server, lambda_counts=lambda_counts)
  uploads, prev, new, _ = G.server_inputs(s.state.scores)
  counts, n = server.tally(uploads, np.ones(G.NUM_CLIENTS))
  if lambda_counts == "state_dict":   # each doubled layer's two pairs
    lam = server.hamming(prev, new)
  else:
    lam = server.hamming(jax.tree.map(lambda m: m[0], prev), jax.tree.map(lambda m: m[0], new))
  out = {"lambda": lam}
  for name, mada, lam_ in (("server_nomada", False, 1.0), ("server_mada_given", True, G.LAMBDA),
                           ("server_mada", True, lam)):
    bcast = server.make_broadcast(counts, G.NUM_CLIENTS, np.float32(lam_), cfg.smoothing)
    out[name] = G.flat(server.rebuild(s.state.scores, bcast,
                                      dataclasses.replace(cfg, mada=mada)))
  return out


@pytest.mark.parametrize("size", ["small", pytest.param("paper", marks=pytest.mark.slow)])
def test_server_step_equals_the_official_server(side, size):
  s = side(size, "pixels")
  assert s.prism.rule.server.mada and s.prism.rule.server.lambda_counts == "state_dict"
  g, ours = s.golden, server_side(s)
  np.testing.assert_allclose(ours["lambda"], g["lambda"], rtol=1e-6)
  for name in ("server_nomada", "server_mada_given", "server_mada"):
    np.testing.assert_allclose(ours[name][g["score_index"]], g[name], atol=1e-4, err_msg=name)


# ------------------------------------------------ each official behaviour, switched off

@pytest.mark.parametrize("row,flip", [
    ("pixels", ("local.estimator", "ste")),           # gradient: grad, not grad * theta
    ("pixels", ("input_fan", "nz")),                  # first layer: true fan-in
    ("pixels", ("local.carry_optimizer", False)),     # a fresh Adam in each call
    ("pixels", ("loss.kwargs.v_init", "zeros")),      # GFMN nets from zeros
    ("vgg19", ("features_kwargs.layers", "last")),    # the last 10 ReLU maps
    ("vgg19", ("features_kwargs.official", False)),   # eval-mode BN, ImageNet inputs
])
def test_comparison_fails_when_an_official_behaviour_is_off(side, row, flip):
  s = side("small", row, (flip,))
  try:
    e = errors(s)
  except IndexError:   # another feature count: the comparison cannot even be made
    return
  worst = max(e[k] / TOLERANCES[k] for k in e)
  assert beyond(e), f"{flip} went unnoticed"
  print(f"{flip}: worst error {worst:.0f}x its tolerance ({beyond(e)})")


def test_lambda_over_the_weights_differs_from_the_official(side):
  s = side("small", "pixels")
  assert abs(float(server_side(s, "weights")["lambda"]) - float(s.golden["lambda"])) > 1e-3
