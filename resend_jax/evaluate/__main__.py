"""``python -m resend_jax.evaluate --config configs/eval.py --workdir OUT [--config.key=value ...]``.

Writes metrics.json, scores.csv, report.md, roc.png and scores.png into OUT (see ``run.py``)
and prints the table.
"""

import jax
from absl import flags, logging
from ml_collections import config_flags

from resend_jax import cli, runtime
from resend_jax.evaluate import metrics, report, run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/eval.py.")
flags.DEFINE_string("workdir", None, "Output directory (features are cached in it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    runtime.use_cpu_cores(FLAGS.config.cpu_devices)
    logging.info("JAX devices: %s", jax.devices())
    results = run.evaluate(FLAGS.config, FLAGS.workdir)
    print(report.preset_table(results) if FLAGS.config.preset else metrics.metrics_table(results))


if __name__ == "__main__":
    cli.run(main)
