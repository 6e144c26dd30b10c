"""``evaluate(config, workdir)``: checkpoint + support and test sources -> scores, metrics, report.

One run: open the sources, keep the known classes of the support set and label every test image
known (0..K-1) or unknown (-1), embed both sets once (cached in ``workdir/features/``), score
them with every method, write the outputs (``report.write_outputs``). A preset runs every target
of a reference benchmark into ``workdir/<target>/`` and writes one table over them.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from resend_jax import checkpoint
from resend_jax.data import protocols
from resend_jax.data.sources import DataError, open_source
from resend_jax.evaluate import api, features, report, scores
from resend_jax.inference import NoveltyModel, load_model

PRESET_TARGETS = {
    "PACS_DG": protocols.PACS_DOMAINS,
    "OfficeHome_DG": protocols.OFFICEHOME_DOMAINS,
    "DomainNet_IN_OUT": protocols.DOMAINNET_DOMAINS,
    "DTD": protocols.DTD_SPLITS,
    "fashion_mnist": {"test": "test"},
}


def load(config: ml_collections.ConfigDict) -> NoveltyModel:
    """The model ``config.checkpoint`` names; errors say which flag to change."""
    if not config.checkpoint:
        raise ValueError(
            "no model: set --config.checkpoint=DIR (a converted checkpoint or a training workdir)"
        )
    try:
        return load_model(config.checkpoint, batch_size=config.batch_size, dtype=config.dtype or None)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(
            f"--config.checkpoint={config.checkpoint} cannot be loaded as a ReSeND model: {e}"
        ) from e


def methods_of(config: ml_collections.ConfigDict) -> list[str] | None:
    """``config.methods`` as a list (None = every method that applies); unknown names raise."""
    methods = [m.strip() for m in config.methods.split(",") if m.strip()]
    api.check_method_names(methods)
    return methods or None


def _open(specs: Sequence[str], config: ml_collections.ConfigDict, role: str):
    try:
        opened = [
            open_source(s, data_dir=config.data.data_dir or None, skip_corrupt=config.data.skip_corrupt)
            for s in specs
        ]
        return protocols.concat(opened)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise ValueError(f"{role} set {list(specs)}: {e}") from e


def _fingerprint(config, model: NoveltyModel, specs: Sequence[str], known: Sequence, image_size: int, n: int):
    with checkpoint.checkpoint_manager(config.checkpoint, read_only=True) as manager:
        step = manager.latest_step()
    return {
        "checkpoint": str(Path(config.checkpoint).resolve()),
        "step": step,
        "model": checkpoint.read_model_json(config.checkpoint)["model"],
        "dtype": config.dtype,
        "image_size": image_size,
        "specs": list(specs),
        "known": [str(k) for k in known],
        "size": n,
    }


def evaluate_sources(
    config: ml_collections.ConfigDict,
    workdir: Path,
    support_specs: Sequence[str],
    test_spec: str,
    known: Sequence[str | int],
    model: NoveltyModel,
) -> api.Evaluation:
    """One evaluation of ``test_spec`` against the known classes of ``support_specs``."""
    methods = methods_of(config)
    raw_support, raw_test = _open(support_specs, config, "support"), _open([test_spec], config, "test")
    known = list(known) or list(raw_support.class_names)
    try:
        support = protocols.known_subset(raw_support, known)
    except DataError as e:
        raise ValueError(
            f"support set {list(support_specs)}: {e}; every known class needs support images"
        ) from e
    try:
        test = protocols.open_set_subset(raw_test, known)
    except DataError as e:
        raise ValueError(f"test set {test_spec}: {e}") from e
    api.check_labels(support.labels, test.labels)

    image_size = config.data.image_size or model.image_size
    registry = scores.registry()
    with_scales = methods is None or any("scales" in registry[m].needs for m in methods)
    embedded = {}
    for role, source, specs in [("support", support, support_specs), ("test", test, [test_spec])]:
        embedded[role] = features.cached(
            workdir / "features" / f"{role}.npz",
            _fingerprint(config, model, specs, known, image_size, len(source)),
            lambda s=source, r=role: features.extract_features(
                model, s, image_size, config.data.num_workers, desc=f"embed {r}", with_scales=with_scales
            ),
            need_scales=with_scales,
        )
    options = {name: dict(o) for name, o in config.scores.items()}
    evaluation = api.evaluate_features(embedded["support"], embedded["test"], methods, model, options)

    test_features = embedded["test"]
    label_names = np.asarray(raw_test.class_names)[raw_test.labels]
    setup = {
        "checkpoint": config.checkpoint,
        "support": ", ".join(support_specs),
        "test": test_spec,
        "known classes": ", ".join(support.class_names),
        "image size": image_size,
        "methods": ", ".join(evaluation.metrics),
        "options": {name: options[name] for name in evaluation.metrics if name in options},
    }
    report.write_outputs(workdir, evaluation, test_features.paths, label_names, test_features.is_known, setup)
    logging.info("wrote %s", workdir)
    return evaluation


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """The CLI: one evaluation (``{method: metrics}``) or a preset (``{target: {method: metrics}}``)."""
    workdir = Path(workdir)
    methods_of(config)
    model = load(config)
    known = protocols.parse_classes(config.data.known_classes)
    if not config.preset:
        if not config.data.support or not config.data.test:
            raise ValueError(
                "set --config.data.support=SPEC[,SPEC...] and --config.data.test=SPEC, or --config.preset"
            )
        support_specs = [s.strip() for s in config.data.support.split(",") if s.strip()]
        return evaluate_sources(config, workdir, support_specs, config.data.test, known, model).metrics
    if config.preset not in PRESET_TARGETS:
        raise ValueError(f"--config.preset={config.preset!r}: choose from {sorted(PRESET_TARGETS)}")
    targets = [t.strip() for t in config.preset_targets.split(",") if t.strip()] or list(
        PRESET_TARGETS[config.preset]
    )
    results = {}
    for target in targets:
        protocol = protocols.preset(config.preset, config.data.root, target, known=known or None)
        evaluation = evaluate_sources(
            config, workdir / target, protocol.support, protocol.test, protocol.known, model
        )
        results[target] = evaluation.metrics
    report.write_metrics(workdir / "metrics.json", results)
    setup = {"checkpoint": config.checkpoint, "preset": config.preset, "root": config.data.root}
    report.write_report(
        workdir / "report.md", f"{config.preset}: every target", report.preset_table(results), setup
    )
    return results
