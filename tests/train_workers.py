"""Subprocess entry points for the data-parallel tests (device counts are fixed per process).

    python tests/train_workers.py single OUT.npz [PARTNERS]   # every local device, one process
    python tests/train_workers.py multi OUT.npz [PARTNERS]    # process JAX_PROCESS_ID of JAX_NUM_PROCESSES

Both run the same 3 ReSeND train steps on the same global batch (image pairs, or with
PARTNERS=batch_prototypes labelled images against batch prototypes with rotation classes) and
save the final params and losses, so the test can compare 1 vs 8 devices and 2 processes x 4.
Every run starts from the same weights: ``model.init`` on one device with an ``rbg`` key, which
compiles in 10 s instead of 23 s with threefry, once for every worker (conftest.py's compilation
cache); the steps' own random numbers use the config's threefry key, as training does.
"""

import sys
from functools import partial

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

STEPS = 3
GLOBAL_BATCH = 16
SIZE = 32


def random_batch(rng: np.random.Generator, partners: str) -> dict[str, np.ndarray]:
    if partners == "images":
        return {
            "image_a": rng.standard_normal((GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "image_b": rng.standard_normal((GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "target": (rng.random(GLOBAL_BATCH) < 0.5).astype(np.float32),
        }
    return {
        "images": rng.standard_normal((GLOBAL_BATCH, 1, SIZE, SIZE, 3)).astype(np.float32),
        "label": rng.integers(0, 6, GLOBAL_BATCH),
    }


def main(mode: str, out: str, partners: str = "images") -> None:
    from resend_jax.models import build_resend
    from resend_jax.train import common
    from resend_jax.train.optim import build_optimizer, warmup_constant
    from resend_jax.train.resend import batch_prototype_logits, image_pair_logits, initial_state, train_step

    sys.path.insert(0, "configs")
    import resend_fashion_mnist

    config = resend_fashion_mnist.get_config("smoke")
    config.data.image_size = SIZE
    # Momentum SGD: an update proportional to the gradient keeps reduction-order noise at float
    # level (Adam's per-element normalisation would amplify it on near-zero gradients).
    config.optimizer = "sgd"
    config.lr = 0.01
    if partners == "images":  # the reference's pairs: no batch classes to whiten with
        config.model.whitening = "none"
        config.model.distance_residual = False
    if mode == "multi":
        common.maybe_initialize_distributed(config)
    model = build_resend(config.model.to_dict())
    tx = build_optimizer(config)
    mesh = common.data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    images = np.zeros((1, SIZE, SIZE, 3), np.float32)
    local = jax.device_get(jax.jit(model.init)(jax.random.key(0, impl="rbg"), images, images))
    variables = jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index]), local
    )
    state = jax.jit(partial(initial_state, config, model, tx), out_shardings=replicated)(variables)
    pair_logits = image_pair_logits
    if partners == "batch_prototypes":
        pair_logits = partial(batch_prototype_logits, num_classes=6, neg_per_pos=5, rotations=True)
    schedule = warmup_constant(config.lr, config.warmup_steps)
    step = common.jit_train_step(
        partial(train_step, model=model, tx=tx, schedule=schedule, pair_logits=pair_logits), mesh
    )
    rng = np.random.default_rng(0)
    per_host = GLOBAL_BATCH // jax.process_count()
    rows = slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)
    losses = []
    for _ in range(STEPS):
        batch = random_batch(rng, partners)
        local = {k: v[rows] for k, v in batch.items()}
        state, metrics = step(state, common.global_batch(local, mesh))
        losses.append(float(metrics["loss"]))
    flat = {
        jax.tree_util.keystr(path): np.asarray(jax.device_get(value))
        for path, value in jax.tree_util.tree_leaves_with_path(
            {"params": state["params"], "bs": state["batch_stats"]}
        )
    }
    np.savez(out, losses=np.array(losses), devices=jax.device_count(), processes=jax.process_count(), **flat)


if __name__ == "__main__":
    main(*sys.argv[1:])
