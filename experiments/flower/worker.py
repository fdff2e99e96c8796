"""A node's long-lived worker (started by ``experiments.flower.client``'s first message):
loads the node's data and compiles its update once, then answers a round per request until
``PRISM_WORKER_IDLE_S`` seconds (default 600) pass without one."""
import os

from absl import app, flags

flags.DEFINE_integer("client_id", None, "this node's client id (partition-id)", required=True)
flags.DEFINE_string("socket", None, "Unix socket to listen on", required=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from experiments.flower import app as flower_app
  from prism_jax.flower import worker
  flower_app.NODE.prepare(FLAGS.client_id)   # data and compiled update before the first round
  worker.serve(FLAGS.socket, flower_app.NODE.train,
                    float(os.environ.get("PRISM_WORKER_IDLE_S", 600)))


if __name__ == "__main__":
  app.run(main)
