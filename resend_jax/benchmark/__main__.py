"""``python -m resend_jax.benchmark --config CONFIG[:ARG] --workdir W [--config.key=value ...]``."""

from absl import flags
from ml_collections import config_flags

from resend_jax import cli
from resend_jax.benchmark import run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/benchmark_fashion_mnist.py:quickstart."
)
flags.DEFINE_string("workdir", None, "Directory for every run, the scores and the leaderboard.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    run.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
