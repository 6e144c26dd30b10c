"""``make quickstart``: ReSeND trained and evaluated on Fashion-MNIST, against the baselines.

1. trains ReSeND with ``configs/resend_fashion_mnist.py`` on the known classes 0-5 into
   ``runs/quickstart/train`` (a rerun resumes, or skips a finished run);
2. scores the test set (known 0-5, unknown 6-9; support = the known classes' training images)
   with every method on the same backbone features into ``runs/quickstart/eval`` (features are
   cached there) and prints the table; ReSeND has no classifier, so MSP, MaxLogit and Energy are
   ``msp_probe``, ``maxlogit_probe`` and ``energy_probe`` (a softmax layer fitted on the support).

``python -m resend_jax.quickstart --baseline`` trains a cross-entropy backbone instead
(``configs/ce_fashion_mnist.py``: same classes, stem, image size and images seen) into
``runs/quickstart/ce``, which scores msp and energy (on its own classifier), knn and mahalanobis
at the end of training.
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

from ml_collections import ConfigDict

from resend_jax import cli
from resend_jax.data.sources import FASHION_MNIST_DIR

RUNS = Path("runs/quickstart")
KNOWN = "0,1,2,3,4,5"


def load_config(path: str, arg: str | None = None) -> ConfigDict:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def eval_config(checkpoint: Path) -> ConfigDict:
    config = load_config("configs/eval.py")
    config.checkpoint = str(checkpoint)
    config.data.support = "idx:fashion_mnist:train"
    config.data.test = "idx:fashion_mnist:test"
    config.data.known_classes = KNOWN
    # The quickstart scores ReSeND by the similarity to the closest prototype, not the reference's
    # softmax over prototypes (README, Quickstart: the softmax rewards being unlike every class),
    # less each class's mean similarity on its support images (scores/resend.py).
    config.scores.resend.softmax = False
    config.scores.resend.calibrate = True
    return config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", action="store_true", help="the cross-entropy baseline instead")
    args = parser.parse_args()
    if not any(Path(FASHION_MNIST_DIR).glob("train-images-idx3-ubyte*")):
        raise SystemExit(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist"
        )

    from resend_jax.evaluate import metrics, run
    from resend_jax.train.__main__ import TRAINERS

    start = time.perf_counter()
    config_path = "configs/ce_fashion_mnist.py" if args.baseline else "configs/resend_fashion_mnist.py"
    train_dir = RUNS / ("ce" if args.baseline else "train")
    config = load_config(config_path)
    print(f"[1/2] training with {config_path} into {train_dir}", flush=True)
    importlib.import_module(TRAINERS[config.trainer]).train_and_evaluate(config, str(train_dir))
    if args.baseline:  # the MODE trainer evaluates at the end of training
        results = json.loads((train_dir / "metrics.json").read_text())
        report = train_dir / "report.md"
    else:
        eval_dir = RUNS / "eval"
        print(f"[2/2] novelty evaluation (known {KNOWN}, unknown 6-9) into {eval_dir}", flush=True)
        results = run.evaluate(eval_config(train_dir), eval_dir)
        report = eval_dir / "report.md"
    print(metrics.metrics_table(results))
    print(f"\nreport: {report}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    with cli.errors_as_last_line():
        main()
