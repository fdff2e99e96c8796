"""Golden files from the official PRISM code: identical inputs, the official outputs.

  python -m benchmarks.official_goldens --official=/tmp/PRISM_ICLR25     # needs torch

Both sides start from the same numbers, drawn here and mapped into the official layouts:
the frozen generator weights and the scores (``ResnetG``'s conv ``[O, I, kh, kw]`` and
conv-transpose ``[nz, C, 4, 4]`` kernels; a residual block's convolutions under both of
their state-dict keys), the VGG19-BN weights (random from a seed, batch-norm parameters
randomised so that a mapping error shows; :func:`vgg_state_dict`), the real images, the
latents, the Bernoulli masks (this project's, handed to ``torch.bernoulli``), the GFMN nets'
initial values and, for the server, the uploaded masks. The official code then runs as
published (:mod:`benchmarks.official`): ``Client.precomputed_real_datas``, two calls of
``Client.local_train`` (2 and 3 local steps, its Adam state and GFMN nets kept across them,
as in the official run), ``Server.average_masks``, ``MADA`` and ``compare_global_mask``.
Its outputs are written to ``tests/goldens/official-<size>-<row>.npz`` (numbers only), which
``tests/test_official_equivalence.py`` checks prism-jax's paper config against, without
PyTorch. Sizes: ``small`` (ngf 8, nz 32, a thin VGG19 with its first 10 ReLU maps) and
``paper`` (ngf 64, nz 128, VGG19-BN's 16 maps, batch 64; entries at a fixed random subset
of indices plus full norms). Rows: ``vgg19`` and ``pixels`` (features patched to the image
on the official side, to check the generator and the estimator without VGG).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from prism_jax import algorithm, configure
from prism_jax import client, features, generator, masking, vgg

SIZES = {
    "small": dict(nz=32, ngf=8, batch=16, width=0.125, num_layers=10, real=40, subset=None),
    "paper": dict(nz=128, ngf=64, batch=64, width=1.0, num_layers=16, real=150, subset=20_000),
}
ROWS = ("pixels", "vgg19")
GOLDENS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                       "goldens")
NUM_CLIENTS = 3           # the server step's uploads
STEPS = (2, 3)            # local steps of the two official local_train calls
SEED, SCORE_KEY, VGG_SEED, STEP_KEY, SERVER_KEY = 3, 4, 5, 6, 7
FEATURE_SUBSET = 1024     # feature indices recorded per sample
LAMBDA = 0.3              # MADA's lambda when given


def golden_path(size: str, row: str) -> str:
  return os.path.join(GOLDENS, f"official-{size}-{row}.npz")


# ---------------------------------------------------------------- the inputs, both sides

def vgg_state_dict(width: float, seed: int = VGG_SEED) -> dict[str, np.ndarray]:
  """Random torchvision-layout ``vgg19_bn.features`` weights: conv weights at He scale,
  biases, batch-norm scales / shifts / running statistics all drawn (none at 1 or 0)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in vgg.torch_layout(True, width).items():
    if len(shape) == 4:
      state[key] = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("weight"):   # batch-norm scale
      state[key] = rng.uniform(0.5, 1.5, shape)
    else:
      state[key] = rng.normal(0, 0.1, shape)
  return {k: v.astype(np.float32) for k, v in state.items()}


def config(size: str, row: str, vgg_weights: str | None = None, flip: tuple = ()):
  """The paper config (``experiments/configs/paper.py``, MNIST) at ``size`` and ``row``;
  ``flip``: ``(dotted name, value)`` pairs set afterwards (to switch a behaviour off)."""
  from experiments.configs import paper
  s = SIZES[size]
  c = paper.get_config("mnist_offline,dirichlet")
  c.nz, c.ngf, c.seed, c.num_clients = s["nz"], s["ngf"], SEED, NUM_CLIENTS
  c.local.batch_size = s["batch"]
  if row == "pixels":
    c.features, c.features_kwargs = "pixels", {}
  else:
    c.features_kwargs.weights = vgg_weights
    c.features_kwargs.num_layers, c.features_kwargs.width = s["num_layers"], s["width"]
  for name, value in flip:
    *parents, leaf = name.split(".")
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def setup(size: str, row: str, workdir: str, flip: tuple = ()):
  """prism-jax's side: ``(prism, weights, state)`` from the paper config (VGG weights
  written to ``workdir``; ``flip``: see :func:`config`); client 0 is the one trained."""
  path = None
  if row == "vgg19":
    path = os.path.join(workdir, f"vgg19_bn-{SIZES[size]['width']}.npz")
    if not os.path.exists(path):
      os.makedirs(workdir, exist_ok=True)
      np.savez(path, **vgg_state_dict(SIZES[size]["width"]))
  c = config(size, row, path, flip)
  prism = configure.build(c)
  weights = generator.init_weights(prism.model, c.seed)
  state = algorithm.init_state(prism.model, c.seed, jax.random.key(SCORE_KEY), c.score_std, prism)
  return prism, weights, state


def real_images(n: int) -> np.ndarray:
  """``n`` MNIST training images at 32x32, uint8 ``[n, 32, 32, 1]`` (offline copy)."""
  from prism_jax import data
  return np.asarray(data.load("mnist_offline", 32)["train"].images[:n])


def real_stats(prism, images: np.ndarray):
  """Client 0's real-feature mean and variance as the library computes them."""
  ex = prism.objective.features
  mean, var = features.client_stats(ex, images[None], np.array([len(images)]),
                                    prism.local.batch_size if ex.batch_dependent else 256)
  return jnp.asarray(mean[0]), jnp.asarray(var[0])


def stats_batches(prism, n: int) -> list[np.ndarray]:
  """The index batches :func:`prism_jax.features.client_stats` forms for one client of
  ``n`` images with a batch-dependent extractor (its seed-0 shuffle)."""
  order = np.random.default_rng(0).permutation(n)
  b = prism.local.batch_size
  return [np.sort(order[i:i + b]) for i in range(0, n, b)]


def step_keys(seed: int = STEP_KEY):
  """The local steps' keys of the two calls."""
  return [jax.random.split(jax.random.fold_in(jax.random.key(seed), i), n)
          for i, n in enumerate(STEPS)]


POOLED = tuple(sum(len(b) for b in vgg.BLOCKS[:i + 1]) - 1 for i in range(len(vgg.BLOCKS)))


def near_ties(prism, weights, scores, key, gap: float = 2e-6) -> int:
  """Max-pooling windows of VGG19 on the step's fakes whose two largest values lie within
  ``gap`` (relative) of each other. Which of the two is larger is then a matter of
  rounding, and so is where the pooling gradient goes: two implementations may route it
  differently, as a Bernoulli draw with theta within rounding of u may differ."""
  ex = prism.objective.features
  if not ex.name.startswith("vgg19"):
    return 0
  _, k_loss = jax.random.split(key)
  k_z, k_mask = jax.random.split(k_loss)
  z = jax.random.normal(k_z, (prism.local.batch_size, prism.model.nz), jnp.float32)
  x = vgg.to_rgb(generator.generate(prism.model, weights, scores, z, k_mask))
  width = max(1, ex.params["conv0"].shape[-1]) / vgg.BLOCKS[0][0]
  outs = vgg.VGG19(True, width, batch_stats=True).apply({"params": ex.params}, x)
  count = 0
  for i in POOLED:
    o = np.asarray(outs[i])
    b, h, w, c = o.shape
    if h < 2:
      continue
    win = np.sort(o[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
                  .transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4), axis=1)
    count += int(np.sum((win[:, 3] > 0) & (win[:, 3] - win[:, 2] <= gap * win[:, 3])))
  return count


def draws(prism, scores, key):
  """The latents and binary masks of a local step with ``key`` (as
  :func:`prism_jax.client.client_step` and ``Objective`` split it)."""
  _, k_loss = jax.random.split(key)
  k_z, k_mask = jax.random.split(k_loss)
  z = jax.random.normal(k_z, (prism.local.batch_size, prism.model.nz), jnp.float32)
  theta = masking.keep_prob(scores)
  bits = jax.tree.map(jax.random.bernoulli, masking.leaf_keys(k_mask, theta), theta)
  return z, bits


def local_training(prism, weights, state, stats, record=None, seed: int = STEP_KEY,
                   masks=None):
  """Client 0's two local-training calls (both from the global scores ``state.scores``,
  the client's optimizer and GFMN state carried; step keys from ``seed``): per step, the
  state after it. ``record(step, scores, key)`` is called before each step; ``masks``:
  per step, binary masks to replay (the golden's) instead of drawing them."""
  cfg, obj = prism.local, prism.objective
  step = jax.jit(lambda st, k, m: client.client_step(
      st, weights, jnp.zeros((1, 32, 32, 1), jnp.uint8), jnp.int32(1), k, objective=obj,
      cfg=cfg, feature_params=obj.features.params, real_stats=stats, masks=m))
  local = jax.tree.map(lambda x: x[0], state.local_states)
  out = []
  for keys in step_keys(seed):
    st = client.client_init(state.scores, cfg, local)
    for k in keys:
      if record is not None:
        record(len(out), st.scores, k)
      st, _ = step(st, k, None if masks is None else masks[len(out)])
      out.append(st)
    local = client.LocalState(st.loss_state, st.opt_state)
  return out


def server_inputs(scores):
  """The uploads ``[K, ...]`` (bools) and MADA's two masks per state-dict copy."""
  like = lambda p, shape: jax.tree.map(lambda k, s: jax.random.bernoulli(  # noqa: E731
      k, p, shape(s)), masking.leaf_keys(jax.random.fold_in(jax.random.key(SERVER_KEY),
                                                            int(p * 100)), scores), scores)
  copies = generator.state_dict_copies(scores)
  uploads = like(0.5, lambda s: (NUM_CLIENTS, *s.shape))
  prev = jax.tree.map(lambda m, c: m[:c], like(0.6, lambda s: (2, *s.shape)), copies)
  new = jax.tree.map(lambda m, c: m[:c], like(0.3, lambda s: (2, *s.shape)), copies)
  return uploads, prev, new, copies


# ---------------------------------------------------------------- layouts

TORCH_NAMES = {"input": "net.firstConv", "output": "net.lastConv"}
TORCH_CONVS = {"conv1": "conv1", "conv2": "conv2", "shortcut": "conv_bypass"}


def torch_name(path: tuple[str, ...]) -> str:
  if path[0] in TORCH_NAMES:
    return TORCH_NAMES[path[0]]
  return f"net.resblock_{int(path[0][len('block'):])}.{TORCH_CONVS[path[1]]}"


def to_torch(path, kernel: np.ndarray) -> np.ndarray:
  """A kernel in the official layout: conv ``[O, I, kh, kw]``, the input conv-transpose
  ``[nz, C, 4, 4]`` (flax ``(kh, kw, in, out)``)."""
  return np.transpose(kernel, (2, 3, 0, 1) if path[0] == "input" else (3, 2, 0, 1))


def from_torch(path, array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 0, 1) if path[0] == "input" else (2, 3, 1, 0))


def paths(tree) -> list[tuple[str, ...]]:
  return [tuple(k.key for k in p)[:-1] for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def flat(tree) -> np.ndarray:
  """All leaves of a scores-like tree, raveled and concatenated (leaf order)."""
  return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])


def tree_from_torch(like, get) -> np.ndarray:
  """``flat`` of a tree read from the official model: ``get(torch_name)`` per layer."""
  return np.concatenate([from_torch(p, get(torch_name(p))).astype(np.float32).ravel()
                         for p in paths(like)])


def feature_permutation(size: str, row: str) -> np.ndarray:
  """``t[j]``: the official (NCHW-flattened) index of prism-jax's feature ``j``."""
  if row == "pixels":
    return np.arange(32 * 32)
  s, out, offset = SIZES[size], [], 0
  for h, w, c in vgg.layer_shapes(32, s["num_layers"], s["width"], "first"):
    chw = np.arange(h * w * c).reshape(c, h, w)
    out.append(offset + np.transpose(chw, (1, 2, 0)).ravel())
    offset += h * w * c
  return np.concatenate(out)


def subset(n: int, k: int | None, seed: int = 0) -> np.ndarray:
  """The recorded indices of an ``n``-vector: all, or ``k`` fixed random ones."""
  if k is None or k >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def unpack_masks(packed: np.ndarray, like) -> list:
  """The golden's per-step masks (packed bits in :func:`flat` order) as bool trees."""
  n = sum(int(x.size) for x in jax.tree.leaves(like))
  leaves, treedef = jax.tree.flatten(like)
  out = []
  for row in packed:
    bits, parts, i = np.unpackbits(row)[:n].astype(bool), [], 0
    for leaf in leaves:
      parts.append(jnp.asarray(bits[i:i + leaf.size].reshape(leaf.shape)))
      i += leaf.size
    out.append(jax.tree.unflatten(treedef, parts))
  return out


def summary(prefix: str, v: np.ndarray, idx: np.ndarray) -> dict:
  """``v`` at ``idx`` and its full norm."""
  return {f"{prefix}": v[..., idx], f"{prefix}_norm": np.linalg.norm(v.reshape(-1))}


# ---------------------------------------------------------------- the official side

def official_vgg(off, width: float, state: dict):
  """The official VGG19-BN feature network (``models.vgg_pytorch``) with ``state``; at
  ``width`` < 1 built by the same code from the thinner layer list."""
  import torch
  from benchmarks import official as O
  O.offline_vgg(off)
  if width == 1.0:
    net = off.vgg.VGG19(get_perceptual_feats=True, num_classes=1000, image_size=32,
                        batch_norm=True, setEncToEval=False)
  else:
    cfg = [v if v == "M" else max(1, int(v * width)) for v in off.vgg.cfgs["E"]]
    net = off.vgg.VGG(off.vgg.make_layers(cfg, batch_norm=True), num_classes=1000,
                      get_perceptual_feats=True)
    net.classifier[0] = torch.nn.Linear(cfg[-2] * 49, 4096)   # its 512 * 7 * 7, thinner
    for idx in range(len(net.features)):
      if str(net.features[idx])[0:4] == "ReLU":
        net._get_hook(idx)
    sizes, feats = off.utils.getNetImageSizeAndNumFeats(net, setEncToEval=False, image_size=32)
    net.ImageSizePerLayer, net.numberOfFeaturesPerLayer = np.array(sizes), np.array(feats)
  missing = net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                strict=False)
  assert not missing.unexpected_keys and all(
      not k.startswith("features.") or k.endswith("num_batches_tracked")
      for k in missing.missing_keys), missing
  off.classifier.set_requires_grad(net, False)
  return net


def official_client(off, size: str, row: str, weights, scores, v_mean, v_var):
  """An official ``Client`` holding prism-jax's weights, scores and GFMN nets."""
  import torch
  from benchmarks import official as O
  s = SIZES[size]
  args = O.args(off, nz=s["nz"], ngf=s["ngf"], nc=1, imageSize=32, local_bs=s["batch"],
                dataset="mnist", local_ep=STEPS[0], save=False,
                numLayersToFtrMatching=s["num_layers"])
  width = s["width"] if row == "vgg19" else SIZES["small"]["width"]   # pixels: unused
  net = official_vgg(off, width, vgg_state_dict(width))
  c = off.client.Client(args, net, None, 0, "cpu")
  if row == "pixels":   # the generator alone: GFMN on the image itself
    c.preprocess_fakeData = lambda x, *_: x
    c.extractFeatures = lambda x, detachOutput=False: x.reshape(x.shape[0], -1)
    c._Client__build_NetMeanVar(32 * 32)
    c._Client__getOptimizers()
  perm = feature_permutation(size, row)
  with torch.no_grad():
    for p, w, sc in zip(paths(weights), jax.tree.leaves(weights), jax.tree.leaves(scores)):
      m = c.gfmn.get_submodule(torch_name(p))
      m.weight.copy_(torch.from_numpy(to_torch(p, np.array(w))))
      m.scores.copy_(torch.from_numpy(to_torch(p, np.array(sc))))
    for net_, v in ((c.NetMean, v_mean), (c.NetVar, v_var)):
      t = np.empty_like(np.asarray(v))
      t[perm] = np.asarray(v)
      net_.weight.copy_(torch.from_numpy(t)[None])
  return c, args


def run_official(off, size, row, prism, weights, state, images, stats, masks, zs):
  """The official client's outputs on the given inputs (prism-jax layouts)."""
  import torch
  from benchmarks import official as O
  local0 = jax.tree.map(lambda x: x[0], state.local_states).loss
  c, args = official_client(off, size, row, weights, state.scores, local0.v_mean,
                            local0.v_var)
  perm = feature_permutation(size, row)
  out = {}
  if row == "vgg19":   # the real statistics over the batches prism-jax forms
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    c.trainloader = [(x[torch.from_numpy(b)], None) for b in stats_batches(prism, len(images))]
    mean, var = c.precomputed_real_datas()
    given = (mean, var)
    out["real_mean"], out["real_var"] = mean.numpy()[perm], var.numpy()[perm]
  else:                # pixel statistics: prism-jax's, in the official (NCHW) order
    given = tuple(torch.from_numpy(np.asarray(v)[np.argsort(perm)]) for v in stats)
  c.Load_precomputed_realData = lambda: given

  record = {"images": [], "feats": [], "grads": [], "scores": []}
  c.gfmn.register_forward_hook(lambda m, i, o: record["images"].append(o.detach().numpy()))
  extract = c.extractFeatures
  c.extractFeatures = lambda x, detachOutput=False: record["feats"].append(
      extract(x, detachOutput)) or record["feats"][-1]
  read = lambda attr: tree_from_torch(  # noqa: E731
      weights, lambda n: getattr(c.gfmn.get_submodule(n), attr).detach().numpy())
  opt_step = c.optimizerG.step

  def step(*a, **kw):
    record["grads"].append(tree_from_torch(
        weights, lambda n: c.gfmn.get_submodule(n).scores.grad.numpy()))
    r = opt_step(*a, **kw)
    record["scores"].append(read("scores"))
    return r
  c.optimizerG.step = step

  losses, first = [], 0
  for n in STEPS:
    with torch.no_grad():   # each call starts from the global scores (load_state_dict)
      for p, sc in zip(paths(weights), jax.tree.leaves(state.scores)):
        c.gfmn.get_submodule(torch_name(p)).scores.copy_(torch.from_numpy(to_torch(
            p, np.asarray(sc))))
    args.local_ep = n
    bern = [np.asarray(to_torch(p, np.asarray(m, np.float32)))
            for t in range(first, first + n) for p, m in zip(paths(weights),
                                                              jax.tree.leaves(masks[t]))]
    with O.given_draws(bernoulli=bern, randn=[np.asarray(z)[:, :, None, None]
                                              for z in zs[first:first + n]]), \
        contextlib.redirect_stdout(io.StringIO()):
      losses += c.local_train(0, None, None)[5]
    first += n
  feats = record["feats"][0].detach().numpy()[:, perm]
  out.update(images=record["images"][0].transpose(0, 2, 3, 1), feats=feats,
             loss=np.float32(losses[0]), losses=np.asarray(losses, np.float32),
             grad=record["grads"][0],
             scores=np.stack(record["scores"]),
             v_mean=c.NetMean.weight.detach().numpy()[0][perm],
             v_var=c.NetVar.weight.detach().numpy()[0][perm])
  return out, c


def run_official_server(off, c, weights, scores):
  """The official server step on the given uploads: scores without MADA, with MADA at a
  given lambda, and lambda as ``compare_global_mask`` computes it from given masks."""
  import types

  import torch
  from scipy.stats import bernoulli as scipy_bernoulli

  from benchmarks import official as O
  uploads, prev, new, copies = server_inputs(scores)
  glob = off.model.ResnetG(c.args, c.args.nz, c.args.nc, c.args.ngf, c.args.imageSize,
                           adaptFilterSize=True, useConvAtSkipConn=False)
  glob.load_state_dict(c.gfmn.state_dict())
  with torch.no_grad():
    for p, sc in zip(paths(weights), jax.tree.leaves(scores)):
      glob.get_submodule(torch_name(p)).scores.copy_(torch.from_numpy(to_torch(
          p, np.asarray(sc))))
  queue = {}
  for k in range(NUM_CLIENTS):   # per client, every state-dict key of a layer its own bits
    for p, u, n in zip(paths(weights), jax.tree.leaves(uploads), jax.tree.leaves(copies)):
      t = to_torch(p, np.asarray(u[k], np.float64))
      queue.setdefault(t.shape, []).extend([t] * n)

  def rvs(theta):   # scipy's output shape (it drops a leading 1), the given bits
    return queue[np.shape(theta)].pop(0).reshape(np.shape(scipy_bernoulli.rvs(theta)))
  saved = off.client.bernoulli
  off.client.bernoulli = types.SimpleNamespace(rvs=rvs)
  try:
    fake = types.SimpleNamespace(global_model=glob, client_list=[c] * NUM_CLIENTS, device="cpu")
    aggregated = off.server.Server.average_masks(fake, 0, range(NUM_CLIENTS))
  finally:
    off.client.bernoulli = saved
  assert not any(queue.values()), "unused uploads"
  read = lambda state: tree_from_torch(  # noqa: E731
      weights, lambda n: state[n + ".scores"].detach().numpy())
  out = {"server_nomada": read(aggregated)}
  out["server_mada_given"] = read(off.model_utils.MADA(c.args, aggregated, glob.state_dict(),
                                                       beta=LAMBDA))
  draws_ = [to_torch(p, np.asarray(m[i], np.float32))
            for masks in (prev, new) for p, m, n in zip(paths(weights), jax.tree.leaves(masks),
                                                        jax.tree.leaves(copies))
            for i in range(n)]
  with O.given_draws(distribution_samples=draws_), contextlib.redirect_stdout(io.StringIO()):
    lam = off.utils.compare_global_mask(c.args, glob, aggregated, [], 0, "cpu")
  out["lambda"] = np.float32(lam)
  out["server_mada"] = read(off.model_utils.MADA(c.args, aggregated, glob.state_dict(),
                                                 beta=lam))
  return out


# ---------------------------------------------------------------- the golden file

def golden(off, size: str, row: str, workdir: str) -> dict:
  prism, weights, state = setup(size, row, workdir)
  s = SIZES[size]
  images = real_images(s["real"])
  stats = real_stats(prism, images)
  for seed in range(STEP_KEY, STEP_KEY + 20):   # steps free of near ties, if there are
    masks, zs, ties = [], [], []

    def record(t, scores, key):
      z, bits = draws(prism, scores, key)
      masks.append(bits)
      zs.append(z)
      ties.append(near_ties(prism, weights, scores, key))
    ours = local_training(prism, weights, state, stats, record, seed)
    if not sum(ties) or size == "paper":
      break
  print(f"{size}/{row}: step seed {seed}, near ties per step {ties}", flush=True)
  out, c = run_official(off, size, row, prism, weights, state, images, stats, masks, zs)
  if row == "pixels":
    out.update(run_official_server(off, c, weights, state.scores))
  idx = subset(masking.num_weights(weights), s["subset"])
  fidx = subset(out["feats"].shape[1], FEATURE_SUBSET, 1)
  g = {"step_seed": seed, "near_ties": np.asarray(ties),
       "masks": np.stack([np.packbits(flat(m).astype(bool)) for m in masks]),
       "images_u8": images, "images": out["images"], "loss": out["loss"],
       "losses": out["losses"], "score_index": idx, "feature_index": fidx,
       **summary("feats", out["feats"], fidx), **summary("grad", out["grad"], idx),
       **summary("v_mean", out["v_mean"], fidx), **summary("v_var", out["v_var"], fidx)}
  s0 = flat(state.scores)
  for t in (0, 1, 4):   # after steps 1, 2 (end of the first call) and 5
    g.update(summary(f"update{t + 1}", out["scores"][t] - s0, idx))
  for k in ("real_mean", "real_var"):
    if k in out:
      g.update(summary(k, out[k], fidx))
  for k in ("server_nomada", "server_mada_given", "server_mada"):
    if k in out:
      g.update(summary(k, out[k], idx))
  if "lambda" in out:
    g["lambda"] = out["lambda"]
  report(size, row, g, ours, s0, stats)
  return g


def report(size, row, g, ours, s0, stats):
  """The errors of prism-jax's own run here against the golden (the test's checks)."""
  idx = g["score_index"]
  lines = []
  for t in (0, 1, 4):
    want = g[f"update{t + 1}"]
    got = (flat(ours[t].scores) - s0)[idx]
    lines.append(f"update{t + 1} rel {np.linalg.norm(got - want) / np.linalg.norm(want):.2e}")
  if "real_mean" in g:
    fidx = g["feature_index"]
    err = np.abs(np.asarray(stats[0])[fidx] - g["real_mean"]).max()
    lines.append(f"real_mean max abs {err:.2e}")
  print(f"{size}/{row}: loss {g['loss']:.6g}; " + "; ".join(lines), flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official", required=True, help="the official repository, fetched")
  p.add_argument("--sizes", default="small,paper")
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--workdir", default="/tmp/prism_goldens")
  a = p.parse_args(argv)
  import torch
  torch.set_num_threads(os.cpu_count())
  from benchmarks import official as O
  off = O.load(os.path.abspath(a.official))
  os.makedirs(a.workdir, exist_ok=True)
  os.makedirs(GOLDENS, exist_ok=True)
  for size in a.sizes.split(","):
    for row in a.rows.split(","):
      t0 = time.perf_counter()
      g = golden(off, size, row, a.workdir)
      np.savez_compressed(golden_path(size, row), **g)
      print(f"wrote {golden_path(size, row)} ({os.path.getsize(golden_path(size, row)):,} "
            f"bytes, {time.perf_counter() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
  main()
