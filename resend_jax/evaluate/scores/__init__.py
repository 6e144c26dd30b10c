"""Novelty scores on shared features, higher = more normal. One module per score.

A score is a function registered under its name::

    @register("name", needs=("model",))   # needs: keys of NEEDS, or nothing
    def score(support: Features, test: Features, *, option=default) -> ScoreOutput

returning the (N,) test scores and the closed-set predictions (known-class indices) or None.
``register(..., default=False)`` keeps an expensive score out of "every method" (it runs when
named).
Every module of this package is imported by ``registry()``, so a new score is one new file; its
keyword options (with their defaults) become ``config.scores.<name>`` in ``configs/eval.py``.
"""

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import numpy as np

ScoreOutput = tuple[np.ndarray, np.ndarray | None]

NEEDS = {
    "logits": "the network's own classifier logits in the test features (Features.logits)",
    "model": "a ReSeND model (pass model=)",
    "scales": "CSD scale vectors of the layer4 map in both feature sets",
    "two_classes": "at least two known classes",
}


@dataclasses.dataclass(frozen=True)
class Score:
    name: str
    fn: Callable[..., ScoreOutput]
    needs: tuple[str, ...]
    default: bool = True

    def options(self) -> dict:
        """The keyword options and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.fn).parameters.values()
            if p.kind == p.KEYWORD_ONLY and p.name != "model"
        }


_REGISTRY: dict[str, Score] = {}


def register(name: str, needs: tuple[str, ...] = (), default: bool = True) -> Callable:
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"score {name!r}: unknown needs {sorted(unknown)}; choose from {sorted(NEEDS)}")

    def decorator(fn: Callable[..., ScoreOutput]) -> Callable[..., ScoreOutput]:
        _REGISTRY[name] = Score(name, fn, tuple(needs), default)
        return fn

    return decorator


def registry() -> dict[str, Score]:
    """Every registered score, ``resend`` first then by name."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return {name: _REGISTRY[name] for name in sorted(_REGISTRY, key=lambda n: (n != "resend", n))}


def default_options() -> dict[str, dict]:
    """``{score: {option: default}}`` for every score with options."""
    return {name: score.options() for name, score in registry().items() if score.options()}
