"""resend_jax: semantic novelty detection in JAX/Flax.

The public entry point is :func:`load_model`, which turns a converted official checkpoint or a
training workdir into a :class:`NoveltyModel` with ``embed``, ``relate`` and ``normality``;
:func:`use_cpu_cores`, called before JAX starts, gives it every core of a CPU.
They are imported on first use, so that importing a submodule (e.g. the data pipeline in a
grain worker process) does not import Flax and the models.
"""

__all__ = ["NoveltyModel", "load_model", "use_cpu_cores"]


def __getattr__(name: str):
    if name == "use_cpu_cores":
        from resend_jax import runtime

        return runtime.use_cpu_cores
    if name in __all__:
        from resend_jax import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'resend_jax' has no attribute {name!r}")
