"""``evaluate(config, workdir)``: checkpoint + support and test sets -> scores, metrics, report.

The data is named one of two ways:

- source specs: ``data.support`` (comma-separated), ``data.test`` and ``data.known_classes``
  (names or indices of the support set's classes; "" = all of them);
- a reference benchmark (``preset``): its official lists (``data.lists``, the reference's
  ``data/txt_lists``) over its images (``data.root``), every target (or ``preset_targets``) into
  ``workdir/<target>/`` with a ``protocol.json``, then ``table.md`` and ``metrics.json`` over the
  targets laid out as the paper's table.

Each set is embedded once (cached in ``features/``, keyed on the model's parameters and the
images' paths, sizes and modification times), scored with every method and written out
(``report.write_outputs``).
"""

import hashlib
import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from resend_jax.data import benchmarks, protocols
from resend_jax.data.sources import DataError, open_source
from resend_jax.evaluate import api, features, report, scores
from resend_jax.inference import NoveltyModel, load_model


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


def model_identity(model: NoveltyModel) -> str:
    """A hash of every parameter and statistic: a checkpoint replaced in place is a new model."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(model.variables):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def _open_specs(config: ml_collections.ConfigDict) -> tuple[protocols.Subset, protocols.Subset, dict]:
    """Support and test sets from ``data.support`` / ``data.test`` / ``data.known_classes``."""
    if not config.data.support or not config.data.test:
        raise ValueError(
            "set --config.data.support=SPEC[,SPEC...] and --config.data.test=SPEC, or --config.preset"
        )
    support_specs = [s.strip() for s in config.data.support.split(",") if s.strip()]

    def opened(specs, role):
        try:
            return protocols.concat(
                [
                    open_source(
                        s, data_dir=config.data.data_dir or None, skip_corrupt=config.data.skip_corrupt
                    )
                    for s in specs
                ]
            )
        except (DataError, FileNotFoundError, ValueError) as e:
            raise ValueError(f"{role} set {list(specs)}: {e}") from e

    raw_support, raw_test = opened(support_specs, "support"), opened([config.data.test], "test")
    known = protocols.parse_classes(config.data.known_classes) or list(raw_support.class_names)
    try:
        support = protocols.known_subset(raw_support, known)
    except DataError as e:
        raise ValueError(f"support set {support_specs}: {e}; every known class needs support images") from e
    test = protocols.open_set_subset(raw_test, support.class_names)
    seed = config.data.sample_seed
    support = protocols.sample(support, config.data.support_size, seed)
    test = protocols.sample(test, config.data.test_size, seed + 1)
    setup = {"support": ", ".join(support_specs), "test": config.data.test}
    return support, test, setup


def label_names(subset: protocols.Subset) -> np.ndarray:
    """Each item's class name in its own source (unknown classes included)."""
    source = subset.source
    return np.asarray(source.class_names)[np.asarray(source.labels)[subset.indices]]


def evaluate_sets(
    config: ml_collections.ConfigDict,
    workdir: Path,
    support: protocols.Subset,
    test: protocols.Subset,
    model: NoveltyModel,
    setup: dict,
) -> api.Evaluation:
    """Embeds (or reuses) both sets, scores every method and writes the outputs into ``workdir``."""
    methods = methods_of(config)
    api.check_labels(support.labels, test.labels)
    image_size = config.data.image_size or model.image_size
    registry = scores.registry()
    with_scales = methods is None or any("scales" in registry[m].needs for m in methods)
    identity = {
        "model": model_identity(model),
        "module": repr(model.module),
        "dtype": config.dtype,
        "image_size": image_size,
    }
    embedded = {}
    for role, subset in [("support", support), ("test", test)]:
        embedded[role] = features.cached(
            workdir / "features" / f"{role}.npz",
            {**identity, "data": protocols.fingerprint(subset), "size": len(subset)},
            lambda s=subset, r=role: features.extract_features(
                model, s, image_size, config.data.num_workers, desc=f"embed {r}", with_scales=with_scales
            ),
            need_scales=with_scales,
        )
    options = {name: dict(o) for name, o in config.scores.items()}
    evaluation = api.evaluate_features(embedded["support"], embedded["test"], methods, model, options)
    setup = {
        "checkpoint": config.checkpoint,
        **setup,
        "known classes": ", ".join(support.class_names),
        "image size": image_size,
        "methods": ", ".join(evaluation.metrics),
        "options": {name: options[name] for name in evaluation.metrics if name in options},
    }
    test_features = embedded["test"]
    report.write_outputs(
        workdir, evaluation, test_features.paths, label_names(test), test_features.is_known, setup
    )
    logging.info("wrote %s", workdir)
    return evaluation


def open_target(config: ml_collections.ConfigDict, target: str):
    """Support, test and protocol of one target of ``config.preset``; errors name the flag."""
    if not config.data.lists or not config.data.root:
        raise ValueError(
            f"--config.preset={config.preset} reads the reference's lists: set --config.data.lists=DIR "
            "(its data/txt_lists folder) and --config.data.root=DIR (its data folder, ~/data)"
        )
    try:
        support, test, protocol = benchmarks.open_benchmark(
            config.preset,
            target,
            config.data.lists,
            config.data.root,
            skip_missing=config.data.skip_missing,
            few_shot=config.data.few_shot,
            few_shot_seed=config.data.few_shot_seed,
            skip_corrupt=config.data.skip_corrupt,
            load_truncated=config.data.load_truncated_images,
        )
    except (DataError, FileNotFoundError) as e:
        raise ValueError(str(e)) from e
    known = protocols.parse_classes(config.data.known_classes)
    if known:  # a subset of the benchmark's known classes, relabelled in the order given
        names = protocols.class_names_of(support, known)
        support = protocols.known_subset(support, names)
        test = protocols.open_set_subset(test.source, names)
        protocol["known_classes_override"] = names
    return support, test, protocol


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """The CLI: one evaluation (``{method: metrics}``) or a preset (``{target: {method: metrics}}``)."""
    workdir = Path(workdir)
    methods_of(config)
    if config.preset and (config.data.support_size or config.data.test_size):
        raise ValueError(
            "--config.data.support_size / test_size sample data.support / data.test, not a preset"
        )
    if config.preset:
        targets = benchmarks.targets(
            config.preset, [t.strip() for t in config.preset_targets.split(",") if t.strip()]
        )
    model = load(config)
    if not config.preset:
        support, test, setup = _open_specs(config)
        return evaluate_sets(config, workdir, support, test, model, setup).metrics
    opened = {target: open_target(config, target) for target in targets}  # every list checked first
    results = {}
    for target, (support, test, protocol) in opened.items():
        logging.info("%s:%s: %s", config.preset, target, json.dumps(protocol))
        (workdir / target).mkdir(parents=True, exist_ok=True)
        (workdir / target / "protocol.json").write_text(json.dumps(protocol, indent=2) + "\n")
        setup = {
            "benchmark": f"{config.preset}, target {target}",
            "support": f"{', '.join(protocol['support']['lists'])} ({protocol['support']['size']} images)",
            "test": f"{protocol['test']['list']} ({protocol['test']['known']} known, "
            f"{protocol['test']['unknown']} unknown)",
            "missing images": protocol["missing"],
        }
        results[target] = evaluate_sets(config, workdir / target, support, test, model, setup).metrics
    report.write_metrics(workdir / "metrics.json", results)
    table = report.preset_table(results)
    (workdir / "table.md").write_text(f"# {config.preset}\n\n{table}\n")
    setup = {
        "checkpoint": config.checkpoint,
        "benchmark": config.preset,
        "lists": config.data.lists,
        "root": config.data.root,
    }
    report.write_report(workdir / "report.md", f"{config.preset}: every target", table, setup)
    return results
