"""Training: the shared CLI and machinery (mesh, checkpoints, logging) and the ReSeND trainer."""

import importlib

from ml_collections import ConfigDict

# config.trainer -> the module whose ``train_and_evaluate(config, workdir)`` runs it.
TRAINERS = {
    "resend": "resend_jax.train.resend",
    "openset": "resend_jax.openset.train",
    "mode": "resend_jax.mode.train",
}


def train_and_evaluate(config: ConfigDict, workdir: str) -> None:
    """Runs ``config`` with the trainer its ``trainer`` key names (``TRAINERS``)."""
    trainer = config.get("trainer")
    if trainer not in TRAINERS:
        raise ValueError(f"config.trainer must be one of {sorted(TRAINERS)}, got {trainer!r}")
    importlib.import_module(TRAINERS[trainer]).train_and_evaluate(config, workdir)
