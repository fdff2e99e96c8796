"""The Flower deployment's entry points: ``python -m experiments.flower`` (a simulation with
Ray against the jitted simulator), ``app`` (the ServerApp and the in-process ClientApp),
``client`` (the JAX-free ClientApp), ``worker`` (a node's long-lived worker) and ``deploy``
(SuperLink, SuperNodes and the run, across processes)."""
