"""Inference API: ``load_model(path)`` -> ``NoveltyModel`` with ``embed``, ``relate``, ``normality``.

Every call is jitted over fixed-size batches (the last one padded) so that any N compiles once
and memory stays bounded; batches are sharded over all local devices along a ``data`` axis.
Inputs are checked first: images must be float and normalised, features as wide as the model's.
A model trained with ``model.whitening`` (``models/whitening.py``) relates whitened features:
its ``relate``, ``normality`` and ``similarities`` take raw features and the known classes'
statistics, ``whitening=model.whitening_from(support_features, support_labels)``.
"""

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resend_jax import checkpoint, runtime
from resend_jax.models import ReSeND, build_resend
from resend_jax.models.whitening import Whitening, whiten, within_class_whitening


def normality_from_logits(
    logits: jax.Array, offsets: jax.Array, softmax: bool = True
) -> tuple[jax.Array, jax.Array]:
    """(N, C) pair logits of (test, prototype) -> ``max_c softmax(-logits - offsets)`` and its argmax.

    ``offsets`` (C,) are subtracted from each class's similarity (zeros in the reference).
    ``softmax=False`` scores ``max_c (-logits - offsets)`` instead: the similarity to the closest
    prototype alone, not relative to the other classes (a deviation from the reference, see
    docs/quickstart_recipe.md).
    """
    similarities = -logits - offsets
    if softmax:
        similarities = jax.nn.softmax(similarities, axis=-1)
    return similarities.max(axis=-1), similarities.argmax(axis=-1)


class NoveltyModel:
    """A ReSeND model with its variables, ready to score images against class prototypes."""

    def __init__(
        self,
        module: ReSeND,
        variables: dict[str, Any],
        image_size: int,
        batch_size: int = 128,
        max_pairs: int = 32768,
    ):
        self.module = module
        # The relational head's input width: the backbone's feature width (512 for ResNet-18).
        self.feature_dim = int(variables["params"]["relational"]["proj"]["kernel"].shape[0])
        self.image_size = image_size
        self.batch_size = batch_size
        self.max_pairs = max_pairs
        self.mesh = Mesh(np.array(jax.devices()), ("data",))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.variables = jax.device_put(variables, self._replicated)

        @runtime.jit
        def embed_batch(variables, images):
            return module.apply(variables, images, method=ReSeND.embed)

        @runtime.jit
        def relate_batch(variables, features_a, features_b):
            return module.apply(variables, features_a, features_b, method=ReSeND.relate)

        @partial(runtime.jit, static_argnames="softmax")
        def normality_batch(variables, test_features, prototypes, offsets, softmax):
            logits = module.apply(variables, test_features, prototypes, method=ReSeND.relate_all)
            return normality_from_logits(logits, offsets, softmax)

        @runtime.jit
        def similarities_batch(variables, test_features, references):
            return -module.apply(variables, test_features, references, method=ReSeND.relate_all)

        self._embed_batch = embed_batch
        self._relate_batch = relate_batch
        self._similarities_batch = similarities_batch
        self._normality_batch = normality_batch
        self._embed_map_batches: dict[Callable, Callable] = {}

    def _batched(self, fn: Callable, arrays: list[np.ndarray], batch_size: int, extra=()) -> list:
        """Runs ``fn(variables, *extra, *batch)`` over fixed-size, device-sharded batches."""
        n = len(arrays[0])
        devices = len(self.mesh.devices.flat)
        batch_size = max(devices, -(-min(batch_size, max(n, 1)) // devices) * devices)
        outputs = []
        for start in range(0, n, batch_size):
            chunk = [np.asarray(a[start : start + batch_size]) for a in arrays]
            valid = len(chunk[0])
            if valid < batch_size:
                chunk = [
                    np.concatenate([c, np.zeros((batch_size - valid, *c.shape[1:]), c.dtype)]) for c in chunk
                ]
            chunk = [jax.device_put(c, self._batch_sharding) for c in chunk]
            result = fn(self.variables, *chunk, *extra)
            outputs.append(jax.tree.map(lambda r, v=valid: np.asarray(r)[:v], result))
        return outputs

    def _check_features(self, name: str, features: np.ndarray, rows: str) -> np.ndarray:
        """``features`` as float32 (rows, feature_dim), or a ValueError naming the argument."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"{name} must be ({rows}, {self.feature_dim}) features (the model's feature width, "
                f"as embed returns them), got shape {features.shape}"
            )
        return features

    def whitening_from(self, support_features: np.ndarray, support_labels: np.ndarray) -> Whitening | None:
        """The known classes' statistics the relation's inputs are whitened with (``None`` for a
        model trained on raw features): from the support set's features and labels 0..C-1."""
        if self.module.whitening == "none":
            return None
        support_features = self._check_features("whitening_from: support_features", support_features, "N")
        support_labels = np.asarray(support_labels)
        if support_labels.shape != support_features.shape[:1] or support_labels.min(initial=0) < 0:
            raise ValueError(
                f"whitening_from expects one label >= 0 per support feature ({len(support_features)}), "
                f"got labels of shape {support_labels.shape}"
            )
        onehot = jax.nn.one_hot(support_labels, int(support_labels.max()) + 1)
        return within_class_whitening(support_features, onehot, self.module.whitening_shrinkage)

    def _relation_inputs(self, name: str, features: np.ndarray, rows: str, whitening: Whitening | None):
        """Checked features, whitened when the model's relation was trained on whitened ones."""
        features = self._check_features(name, features, rows)
        if self.module.whitening == "none":
            if whitening is not None:
                raise ValueError(f"{name}: this model's relation takes raw features; pass whitening=None")
            return features
        if whitening is None:
            raise ValueError(
                f"{name}: this model's relation takes whitened features (model.whitening = "
                f"{self.module.whitening!r}); pass "
                "whitening=model.whitening_from(support_features, support_labels)"
            )
        return np.asarray(whiten(features, whitening))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Normalised NHWC float32 images, any size >= 32 px -> (N, 512) float32 features."""
        images = _check_images("embed", images)
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 32:
            raise ValueError(f"embed expects (N, H, W, 3) images with H, W >= 32, got {images.shape}")
        outputs = self._batched(self._embed_batch, [images], self.batch_size)
        return np.concatenate(outputs) if outputs else np.zeros((0, 512), np.float32)

    def embed_with_map(
        self, images: np.ndarray, reduce_map: Callable[[jax.Array], jax.Array]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``embed``, plus ``reduce_map`` of the (N, h, w, 512) layer4 map, computed on device.

        ``reduce_map`` is a jax function of the map (e.g. CSD's six scale vectors); it is jitted
        with the backbone, so the full maps never leave the device.
        """
        images = _check_images("embed_with_map", images)
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 32 or not len(images):
            raise ValueError(
                f"embed_with_map expects (N >= 1, H, W, 3) images with H, W >= 32, got {images.shape}"
            )
        if reduce_map not in self._embed_map_batches:

            def backbone_with_map(module, x):
                return module.backbone(x, return_map=True)

            @runtime.jit
            def embed_map_batch(variables, batch):
                features, feature_map = self.module.apply(variables, batch, method=backbone_with_map)
                return features, reduce_map(feature_map)

            self._embed_map_batches[reduce_map] = embed_map_batch
        outputs = self._batched(self._embed_map_batches[reduce_map], [images], self.batch_size)
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def relate(
        self, features_a: np.ndarray, features_b: np.ndarray, whitening: Whitening | None = None
    ) -> np.ndarray:
        """Two (N, 512) feature arrays -> (N,) raw logits (high = different classes)."""
        features_a = self._relation_inputs("relate: features_a", features_a, "N", whitening)
        features_b = self._relation_inputs("relate: features_b", features_b, "N", whitening)
        if features_a.shape != features_b.shape:
            raise ValueError(
                f"relate expects two (N, 512) arrays, got {features_a.shape} and {features_b.shape}"
            )
        outputs = self._batched(self._relate_batch, [features_a, features_b], self.max_pairs)
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def normality(
        self,
        test_features: np.ndarray,
        prototypes: np.ndarray,
        max_pairs: int | None = None,
        softmax: bool = True,
        offsets: np.ndarray | None = None,
        whitening: Whitening | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 512) test features x (C, 512) prototypes -> (scores, predictions), each (N,).

        score = ``max_c softmax_c(-logit(test, prototype_c))`` and prediction its argmax, as the
        reference evaluation (``softmax=False``: ``max_c -logit``; ``offsets`` (C,) are subtracted
        from each class's ``-logit`` first); test features are chunked so at most ``max_pairs``
        pairs (default ``self.max_pairs``) are live.
        """
        test_features = self._relation_inputs("normality: test_features", test_features, "N", whitening)
        prototypes = jnp.asarray(self._relation_inputs("normality: prototypes", prototypes, "C", whitening))
        if prototypes.shape[0] == 0:
            raise ValueError(f"normality expects (C, 512) prototypes with C >= 1, got {prototypes.shape}")
        offsets = jnp.zeros(prototypes.shape[0]) if offsets is None else jnp.asarray(offsets, jnp.float32)
        if offsets.shape != prototypes.shape[:1]:
            raise ValueError(
                f"normality expects one offset per prototype ({prototypes.shape[0]}), got {offsets.shape}"
            )
        chunk = max(1, (max_pairs or self.max_pairs) // prototypes.shape[0])
        normality_batch = partial(self._normality_batch, softmax=softmax)
        outputs = self._batched(normality_batch, [test_features], chunk, extra=(prototypes, offsets))
        if not outputs:
            return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])

    def similarities(
        self,
        test_features: np.ndarray,
        references: np.ndarray,
        max_pairs: int | None = None,
        whitening: Whitening | None = None,
    ) -> np.ndarray:
        """(N, 512) x (M, 512) -> (N, M) float32 ``-logit(test, reference)`` (high = same class).

        The reference's evaluators with several prototypes per class or a kNN over the support
        compare this way; test rows are chunked so at most ``max_pairs`` pairs are live.
        """
        test_features = self._relation_inputs("similarities: test_features", test_features, "N", whitening)
        references = jnp.asarray(
            self._relation_inputs("similarities: references", references, "M", whitening)
        )
        if references.shape[0] == 0:
            raise ValueError(f"similarities expects (M, 512) references with M >= 1, got {references.shape}")
        chunk = max(1, (max_pairs or self.max_pairs) // references.shape[0])
        outputs = self._batched(self._similarities_batch, [test_features], chunk, extra=(references,))
        return np.concatenate(outputs) if outputs else np.zeros((0, references.shape[0]), np.float32)


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    """Float images as float32; integer images are refused, 0-255 float values warned about.

    The backbone expects ImageNet-normalised values (about -2.1 to 2.6): raw 0-255 pixels give
    features that look fine and mean nothing.
    """
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"{name} expects float images normalised with the ImageNet mean and std, got {images.dtype}: "
            "convert them to float32 with resend_jax.data.transforms.normalize (uint8 in [0, 255] in)"
        )
    images = images.astype(np.float32, copy=False)
    if images.size and float(np.abs(images).max()) > 20:
        warnings.warn(
            f"{name}: image values reach {float(np.abs(images).max()):g}, which looks like 0-255 pixels; "
            "normalise them with the ImageNet mean and std (resend_jax.data.transforms.normalize)",
            stacklevel=3,
        )
    return images


def abstract_variables(module: ReSeND, image_size: int = 64) -> dict[str, Any]:
    """Shapes and dtypes of ``{"params", "batch_stats"}`` without allocating them."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), images, images))


def load_model(path: str | Path, batch_size: int = 128, dtype: str | None = None) -> NoveltyModel:
    """Loads a directory written by ``convert_torch`` or a training workdir (its latest step).

    ``dtype`` overrides the compute dtype recorded with the model (e.g. ``"bfloat16"`` on GPU).
    """
    meta = checkpoint.read_model_json(path)
    model_config = dict(meta["model"])
    if dtype is not None:
        model_config["dtype"] = dtype
    module = build_resend(model_config)
    variables = checkpoint.restore_model_variables(path, abstract_variables(module))
    return NoveltyModel(module, variables, image_size=meta["image_size"], batch_size=batch_size)
