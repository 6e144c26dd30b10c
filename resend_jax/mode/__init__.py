"""MODE (IEEE TIP 2023): SupCon and ALPA training, evaluated with the cross-scale decision (CSD).

``losses`` (``supcon_loss``, ``alpa_loss``, ``alpa_similarity``, ``attention``), ``model``
(``MODENet``), ``train`` (the trainer of ``config.trainer = "mode"``) and ``evaluate``.
"""

from resend_jax.mode.losses import alpa_loss, alpa_similarity, attention, contrastive_loss, supcon_loss
from resend_jax.mode.model import MODENet, build_model

__all__ = [
    "MODENet",
    "alpa_loss",
    "alpa_similarity",
    "attention",
    "build_model",
    "contrastive_loss",
    "supcon_loss",
]
