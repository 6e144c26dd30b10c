"""Converts the official PyTorch ReSeND checkpoints (or a torchvision ResNet-18) to an orbax model.

    python -m resend_jax.convert_torch --feature_extractor feature_extractor.pkl \\
        --relational cls_rel.pkl --out DIR
    python -m resend_jax.convert_torch --resend resend.pth --out DIR
    python -m resend_jax.convert_torch --torchvision_resnet18 resnet18-f37072fd.pth --out DIR

Only tensors are read (``torch.load(weights_only=True)``); no model class is built and no GPU is
needed. The backbone file of the official code holds every tensor twice (``model_resnet.<name>``
and ``<name>``): both copies must agree. ``fc.*`` and ``num_batches_tracked`` are ignored. Any
missing key, unexpected key or shape mismatch fails with one error that lists each of them.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags

from resend_jax import checkpoint, cli
from resend_jax.inference import abstract_variables
from resend_jax.models import build_resend

DEFAULT_MODEL_CONFIG = {"stem": "imagenet", "embed_dim": 768, "depth": 4, "num_heads": 12, "dtype": "float32"}
OFFICIAL_IMAGE_SIZE = 224

IGNORED = re.compile(r"(^|\.)fc\.|num_batches_tracked$")
MODULE_RENAMES = [
    (re.compile(r"^(layer\d|blocks)_(\d+)$"), r"\1.\2"),
    (re.compile(r"^downsample_conv$"), "downsample.0"),
    (re.compile(r"^downsample_bn$"), "downsample.1"),
]
LEAF_RENAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""


def torch_name(path: tuple[str, ...]) -> str:
    """Flax path below ``backbone``/``relational`` -> the official PyTorch state_dict key."""
    *modules, leaf = path
    renamed = []
    for module in modules:
        for pattern, replacement in MODULE_RENAMES:
            module = pattern.sub(replacement, module)
        renamed.append(module)
    return ".".join([*renamed, LEAF_RENAMES.get(leaf, leaf)])


def to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    """PyTorch layout -> Flax layout: conv OIHW -> HWIO, linear [out, in] -> [in, out]."""
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``d state_dict as numpy arrays, without importing model classes."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file.
        raise ConversionError(f"cannot read {path} as a PyTorch state_dict: {e}") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def strip_prefix(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def merge_backbone_copies(state: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Folds ``model_resnet.<name>`` onto ``<name>``; the two copies must be equal."""
    state = strip_prefix(state, "module.")
    merged, conflicts = {}, []
    for key, value in state.items():
        name = key.removeprefix("model_resnet.")
        if name in merged and not np.array_equal(merged[name], value):
            conflicts.append(name)
        merged[name] = value
    if conflicts:
        raise ConversionError(f"{source}: the two copies of these backbone tensors differ: {conflicts}")
    return merged


def convert(
    backbone_state: Mapping[str, np.ndarray] | None,
    relational_state: Mapping[str, np.ndarray] | None,
    model_config: Mapping[str, Any] = DEFAULT_MODEL_CONFIG,
    seed: int = 0,
    sources: tuple[str, str] = ("backbone checkpoint", "relational checkpoint"),
) -> dict[str, Any]:
    """State dicts -> ``{"params", "batch_stats"}`` for ``build_resend(model_config)``.

    A part given as ``None`` keeps the reference initialisation (seeded), e.g. the relational
    module when starting from an ImageNet backbone.
    """
    module = build_resend(model_config)
    images = np.zeros((1, 64, 64, 3), np.float32)
    init = jax.jit(module.init)(jax.random.key(seed), images, images)
    states = {"backbone": backbone_state, "relational": relational_state}
    source_of = dict(zip(states, sources))
    used = {part: set() for part in states}
    missing, mismatched = [], []

    def fill(path, initial):
        keys = [p.key for p in path]
        part, leaf = keys[1], keys[-1]
        state = states[part]
        if state is None:
            return np.asarray(initial)
        name = torch_name(tuple(keys[2:]))
        if name not in state:
            missing.append(f"{source_of[part]}: {name}")
            return np.asarray(initial)
        used[part].add(name)
        value = to_flax(state[name], leaf)
        if value.shape != initial.shape:
            mismatched.append(
                f"{source_of[part]}: {name} has shape {tuple(state[name].shape)}, "
                f"expected {tuple(to_flax(np.empty(initial.shape), leaf).shape)}"
            )
            return np.asarray(initial)
        return value.astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, init)
    unexpected = [
        f"{source_of[part]}: {name}"
        for part, state in states.items()
        if state is not None
        for name in sorted(state)
        if name not in used[part] and not IGNORED.search(name)
    ]
    problems = [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)]
    if any(items for _, items in problems):
        lines = [f"{title} ({len(items)}):\n  " + "\n  ".join(items) for title, items in problems if items]
        raise ConversionError("checkpoint does not fit the ReSeND model:\n" + "\n".join(lines))
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def convert_files(
    out: str | Path,
    feature_extractor: str | None = None,
    relational: str | None = None,
    resend: str | None = None,
    torchvision_resnet18: str | None = None,
    image_size: int = OFFICIAL_IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """Converts one of the three accepted inputs and writes the model directory ``out``."""
    if resend:
        if feature_extractor or relational or torchvision_resnet18:
            raise ValueError("--resend replaces --feature_extractor/--relational/--torchvision_resnet18")
        state = load_state_dict(resend)
        backbone = {k: v for k, v in state.items() if k.startswith("feature_extractor.")}
        rel = {k: v for k, v in state.items() if k.startswith("cls_rel.")}
        others = sorted(set(state) - set(backbone) - set(rel))
        if others:
            raise ConversionError(f"{resend}: keys outside feature_extractor./cls_rel.: {others}")
        backbone_state = merge_backbone_copies(strip_prefix(backbone, "feature_extractor."), resend)
        relational_state = strip_prefix(strip_prefix(rel, "cls_rel."), "module.")
        sources = (f"{resend} (feature_extractor.)", f"{resend} (cls_rel.)")
        origin = {"resend": str(resend)}
    elif torchvision_resnet18:
        if feature_extractor or relational:
            raise ValueError("--torchvision_resnet18 initialises the backbone only; drop the other inputs")
        backbone_state = merge_backbone_copies(load_state_dict(torchvision_resnet18), torchvision_resnet18)
        relational_state = None
        sources = (str(torchvision_resnet18), "relational (initialised)")
        origin = {"torchvision_resnet18": str(torchvision_resnet18), "relational_init_seed": seed}
    elif feature_extractor and relational:
        backbone_state = merge_backbone_copies(load_state_dict(feature_extractor), feature_extractor)
        relational_state = strip_prefix(load_state_dict(relational), "module.")
        sources = (str(feature_extractor), str(relational))
        origin = {"feature_extractor": str(feature_extractor), "relational": str(relational)}
    else:
        raise ValueError("give --feature_extractor and --relational, or --resend, or --torchvision_resnet18")

    variables = convert(backbone_state, relational_state, DEFAULT_MODEL_CONFIG, seed, sources)
    out = Path(out)
    if (out / checkpoint.CHECKPOINTS).exists():
        raise FileExistsError(f"{out / checkpoint.CHECKPOINTS} already exists; choose a new --out")
    checkpoint.save_model_variables(out, variables)
    checkpoint.write_model_json(out, DEFAULT_MODEL_CONFIG, image_size, converted_from=origin)
    # Sanity check that the directory loads back with the recorded config.
    checkpoint.restore_model_variables(out, abstract_variables(build_resend(DEFAULT_MODEL_CONFIG)))
    return out


FLAGS = flags.FLAGS
flags.DEFINE_string("feature_extractor", None, "Official feature_extractor.pkl (backbone).")
flags.DEFINE_string("relational", None, "Official cls_rel.pkl (relational module).")
flags.DEFINE_string("resend", None, "Single-file variant with feature_extractor./cls_rel. prefixes.")
flags.DEFINE_string("torchvision_resnet18", None, "torchvision ResNet-18 weights: backbone-only init.")
flags.DEFINE_string("out", None, "Output model directory.", required=True)
flags.DEFINE_integer("image_size", OFFICIAL_IMAGE_SIZE, "Image size recorded with the model.")
flags.DEFINE_integer("seed", 0, "Seed of the relational init when only a backbone is given.")


def main(argv):
    del argv
    out = convert_files(
        FLAGS.out,
        feature_extractor=FLAGS.feature_extractor,
        relational=FLAGS.relational,
        resend=FLAGS.resend,
        torchvision_resnet18=FLAGS.torchvision_resnet18,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
    )
    print(f"wrote {out}: load it with resend_jax.load_model({str(out)!r})")


if __name__ == "__main__":
    cli.run(main)
