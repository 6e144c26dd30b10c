"""Model checkpoints on disk: one layout for converted weights and for training workdirs.

A model directory holds ``model.json`` (the model config and the image size it expects) and an
orbax ``CheckpointManager`` folder ``checkpoints/<step>/`` whose ``model`` item is
``{"params", "batch_stats"}``. A converted official checkpoint is step 0 with only that item;
training adds its own items (optimizer, data iterator) beside it.
"""

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

MODEL_JSON = "model.json"
CHECKPOINTS = "checkpoints"


def write_model_json(directory: str | Path, model_config: dict[str, Any], image_size: int, **extra) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"model": dict(model_config), "image_size": int(image_size), **extra}
    (directory / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")


def read_model_json(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a directory written by `python -m resend_jax.convert_torch` "
            "or the workdir of a ReSeND training run; cross-entropy, MODE and open-set runs save no "
            "ReSeND model (evaluate them with their own commands, see README)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _not_read_only_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


def checkpoint_manager(directory: str | Path, **options) -> ocp.CheckpointManager:
    """The orbax manager of ``directory/checkpoints``.

    ``read_only=True`` also turns off what only a writer does (creating the folder, saving at an
    interval), so that orbax does not warn that it overrides them, and its warning that the
    folder is read-only is dropped: loading a model logs no warning.
    """
    if options.get("read_only"):
        options = {"create": False, "save_interval_steps": 0, **options}
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_not_read_only_notice)
    try:
        return ocp.CheckpointManager(
            Path(directory).absolute() / CHECKPOINTS, options=ocp.CheckpointManagerOptions(**options)
        )
    finally:
        absl_logger.removeFilter(_not_read_only_notice)


def first_cause(error: BaseException) -> str:
    """One line for a failed restore: the exception's type and the first line of its message,
    without the tensorstore spec that follows tensorstore's."""
    text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    lines = text.split(" [tensorstore_spec=")[0].strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def save_model_variables(directory: str | Path, variables: dict[str, Any], step: int = 0) -> None:
    """Writes ``{"params", "batch_stats"}`` as the ``model`` item of checkpoint ``step``."""
    with checkpoint_manager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(variables)))
        manager.wait_until_finished()


def restore_model_variables(directory: str | Path, abstract_variables: Any, step: int | None = None):
    """Restores the ``model`` item of the latest (or given) step onto the abstract tree's shapes.

    A tree that does not match (missing or extra keys, other shapes) raises ``ValueError``
    naming the checkpoint, instead of orbax's bare message.
    """
    with checkpoint_manager(directory, read_only=True) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {Path(directory) / CHECKPOINTS}")
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_variables))
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint {Path(directory) / CHECKPOINTS / str(step)} does not match the model "
                f"described by {Path(directory) / MODEL_JSON}: {e}"
            ) from e
    variables = restored["model"]
    mismatched = [
        f"{jax.tree_util.keystr(path)}: checkpoint {tuple(a.shape)} vs model {tuple(b.shape)}"
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(abstract_variables)
        )
        if a.shape != b.shape
    ]
    if mismatched:
        raise ValueError(f"checkpoint {directory} has shapes the model does not: {mismatched}")
    return variables
