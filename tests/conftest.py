"""Shared fixtures: a reference PyTorch ReSeND saved in the official two-file format; one JAX
compilation cache for the whole session; the jobs that run beside the tests (background.py)."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from background import Background  # noqa: E402

# Most of a small training run is XLA compiling its step (about 40 of 50 s for the ReSeND smoke
# config on 2 cores), and many tests, in this process and in the subprocesses they start (which
# inherit the environment), compile the same programs. JAX's persistent cache, in a fresh folder
# per session, compiles each program once: the key is the program, the compile options and
# jaxlib's version (not the simulated device count), so a cache hit runs the same executable.
# A cache folder that the environment already names is used instead.
_session_cache = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _session_cache = tempfile.mkdtemp(prefix="resend-jax-compilations-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    if "jax" in sys.modules:  # imported before this file (by a plugin): it read the environment then
        import jax

        jax.config.update("jax_compilation_cache_dir", _session_cache)
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
        )


_background = Background(Path(tempfile.mkdtemp(prefix="resend-jax-background-")))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "background(*names): jobs of the module's BACKGROUND_JOBS the test waits for (background.py)",
    )


def pytest_collection_finish(session):
    """Queues the background jobs of the selected tests, in the order the tests run."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        for marker in item.iter_markers("background"):
            jobs = getattr(item.module, "BACKGROUND_JOBS", {})
            for name in marker.args:
                if name not in jobs:
                    raise pytest.UsageError(f"{item.nodeid}: no job {name!r} in its module's BACKGROUND_JOBS")
                _background.submit(name, jobs[name])
    _background.start()


@pytest.fixture(scope="session")
def background() -> Background:
    return _background


def pytest_unconfigure(config):
    _background.close()
    shutil.rmtree(_background.root, ignore_errors=True)
    if _session_cache is not None:
        shutil.rmtree(_session_cache, ignore_errors=True)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory):
    """(directory, feature_extractor, relational): random reference weights, official keys."""
    import torch
    import torch_reference as ref

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    feature_extractor = ref.ResNetFc().eval()
    ref.randomise_batch_norm(feature_extractor, generator)
    relational = ref.RelationalTransformer().eval()
    directory = tmp_path_factory.mktemp("official")
    torch.save(feature_extractor.state_dict(), directory / "feature_extractor.pkl")
    torch.save(relational.state_dict(), directory / "cls_rel.pkl")
    return directory, feature_extractor, relational


@pytest.fixture(scope="session")
def converted(official_checkpoint, tmp_path_factory):
    """The official checkpoint converted with ``convert_files``; returns its directory."""
    from resend_jax.convert_torch import convert_files

    directory, _, _ = official_checkpoint
    out = tmp_path_factory.mktemp("converted") / "model"
    return convert_files(
        out,
        feature_extractor=str(directory / "feature_extractor.pkl"),
        relational=str(directory / "cls_rel.pkl"),
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A model directory with random weights: the ResNet-18 backbone and a one-block relational
    module of width 32, for 32 px images (fast end-to-end evaluations). The weights are drawn
    with NumPy on the abstract shapes, which is much faster than tracing ``init``."""
    import jax
    import numpy as np

    from resend_jax import checkpoint
    from resend_jax.inference import abstract_variables
    from resend_jax.models import build_resend

    config = {"stem": "imagenet", "embed_dim": 32, "depth": 1, "num_heads": 2, "dtype": "float32"}
    rng = np.random.default_rng(0)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(shape.shape, np.float32)
        if "bias" in name or "mean" in name:
            return np.zeros(shape.shape, np.float32)
        fan_in = int(np.prod(shape.shape[:-1])) or 1
        return (rng.normal(size=shape.shape) / np.sqrt(fan_in)).astype(np.float32)

    shapes = abstract_variables(build_resend(config), 32)
    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    directory = tmp_path_factory.mktemp("tiny") / "model"
    checkpoint.write_model_json(directory, config, 32)
    checkpoint.save_model_variables(directory, variables)
    return directory
