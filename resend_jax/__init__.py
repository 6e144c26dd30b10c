"""resend_jax: semantic novelty detection in JAX/Flax.

The public entry point is :func:`load_model`, which turns a converted official checkpoint or a
training workdir into a :class:`NoveltyModel` with ``embed``, ``relate`` and ``normality``.
"""

from resend_jax.inference import NoveltyModel, load_model

__all__ = ["NoveltyModel", "load_model"]
