"""resend_jax: semantic novelty detection (ReSeND, MODE, open-set training) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="resend_jax",
    version="0.1.0",
    description="ReSeND relational novelty detection, MODE and open-set training in JAX/Flax.",
    packages=find_packages(include=["resend_jax", "resend_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "grain>=0.2.10",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.8",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "matplotlib>=3.8",
        "pillow>=10.0",
        "tqdm>=4.66",
    ],
    extras_require={
        # CPU build of PyTorch: checkpoint conversion, parity tests and benchmarks.
        "torch": ["torch==2.13.0"],
        "test": ["pytest>=8.0", "ruff>=0.6"],
    },
)
