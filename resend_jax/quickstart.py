"""``make quickstart``: train ReSeND on Fashion-MNIST known classes, then score novelty.

Filled in by the quickstart issue; for now it checks the data and prints the plan.
"""

from pathlib import Path

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PLAN = """resend_jax quickstart (on Fashion-MNIST from {data})
  1. train ReSeND with configs/resend_fashion_mnist.py into runs/quickstart/train
     (known classes 0-5: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal)
  2. evaluate novelty on the test set (unknown classes 6-9: Shirt, Sneaker, Bag, Ankle boot)
     with ReSeND and every baseline into runs/quickstart/eval, and print the table
Not implemented yet: see the quickstart issue."""


def main() -> None:
    if not any(FASHION_MNIST.glob("train-images-idx3-ubyte*")):
        raise SystemExit(f"Fashion-MNIST not found in {FASHION_MNIST}: apt-get install dataset-fashion-mnist")
    print(PLAN.format(data=FASHION_MNIST))


if __name__ == "__main__":
    main()
