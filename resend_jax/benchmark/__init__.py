"""The leaderboard of systems: each method trained its own way on the same data and budget.

``python -m resend_jax.benchmark --config configs/benchmark_fashion_mnist.py --workdir W``;
``run.run`` trains and scores, ``leaderboard`` aggregates over seeds and writes
``leaderboard.{json,md,png}``.
"""
