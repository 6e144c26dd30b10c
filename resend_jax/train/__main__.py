"""``python -m resend_jax.train --config CONFIG[:ARG] --workdir W [--dry_run] [--config.key=value ...]``.

The config's ``trainer`` names the module that trains it; each such module exposes
``train_and_evaluate(config, workdir)``.
"""

from absl import flags
from ml_collections import config_flags

from resend_jax import cli
from resend_jax.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/resend_fashion_mnist.py:smoke.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_bool(
    "dry_run",
    False,
    "Compile the ReSeND train step on the current mesh, report memory, FLOPs and the "
    "input rate each host needs, and exit (train/dry_run.py).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if FLAGS.dry_run:
        from resend_jax.train.dry_run import dry_run

        dry_run(FLAGS.config, FLAGS.workdir)
    else:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
