"""The record names of the deployment's Flower messages (no JAX: the ClientApp glue in
:mod:`prism_jax.flower.worker` imports them)."""
SCORES, CONFIG, UPLOAD, PROBS, METRICS, LOCAL_STATE, GLOBAL, DOWN = (
    "scores", "config", "upload", "probs", "metrics", "local_state", "global", "downlink")
