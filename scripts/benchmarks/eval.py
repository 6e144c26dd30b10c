"""Evaluation throughput: test images per second for embed + ReSeND score, JAX against PyTorch eager.

Rows at 64 and 224 px with 10 and 345 prototypes (PACS-like and DomainNet-like known sets):
- JAX: ``NoveltyModel.embed_with_map`` with CSD's scale vectors (what ``python -m
  resend_jax.evaluate`` runs per batch) then ``NoveltyModel.normality`` against the prototypes;
- PyTorch: the reference evaluation, the backbone under ``torch.no_grad`` then
  ``torch_reference.reference_normality`` (one test image at a time against every prototype).
Prototypes are computed once from the support set and are not timed. Weights are random
(throughput does not depend on them). GFLOP/s count the backbone's convolutions and the
relational transformer's matmuls (``common.resnet18_flops``, ``common.relational_flops``), and
are compared with a matmul ceiling measured in the same run. JAX runs over every device of the
process, as ``NoveltyModel`` does (``--cpu_devices``: one per core by default).
Both start from images in host memory, so on a GPU the copy to the device is timed for both;
JAX computes in ``--dtype``, PyTorch in float32.
"""

import jax
import numpy as np
import torch
import torch_reference as ref

from benchmarks.common import (
    ON_GPU,
    TORCH_DEVICE,
    matmul_ceiling_gflops,
    relational_flops,
    resnet18_flops,
    set_threads,
    time_interleaved,
    torch_sync,
)
from resend_jax.evaluate.scales import scale_vectors
from resend_jax.inference import NoveltyModel
from resend_jax.models import build_resend

PROTOTYPES = (10, 345)


def _jax_model(batch_size: int, dtype: str) -> NoveltyModel:
    module = build_resend({"dtype": dtype})
    images = np.zeros((1, 64, 64, 3), np.float32)
    variables = module.init(jax.random.key(0), images, images)
    return NoveltyModel(module, variables, image_size=224, batch_size=batch_size)


def _evaluations(model, backbone, relational, images: np.ndarray, prototypes: np.ndarray) -> dict:
    """Blocking JAX and PyTorch functions that embed ``images`` and score them."""
    images_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    prototypes_torch = torch.from_numpy(prototypes).to(TORCH_DEVICE)

    def run_jax():
        features, _ = model.embed_with_map(images, scale_vectors)
        return model.normality(features, prototypes)

    def run_torch():
        with torch.no_grad():
            features = backbone(images_torch.to(TORCH_DEVICE))
            return torch_sync(ref.reference_normality(relational, features, prototypes_torch))

    return {"jax": run_jax, "torch": run_torch}


def run(args) -> list[dict]:
    threads = set_threads()
    n = 16 if args.quick else 512 if ON_GPU else 64
    repeats = 2 if args.quick else 5
    model = _jax_model(n, args.dtype)
    torch.manual_seed(0)
    backbone = ref.ResNetFc().eval().to(TORCH_DEVICE)
    relational = ref.RelationalTransformer().eval().to(TORCH_DEVICE)
    ceiling = matmul_ceiling_gflops(args.dtype, repeats=3)["ceiling"]
    rng = np.random.default_rng(0)
    rows = []
    for size in (64, 224):
        images = rng.standard_normal((n, size, size, 3), np.float32)
        for count in PROTOTYPES:
            prototypes = np.abs(rng.standard_normal((count, 512), np.float32))
            fns = _evaluations(model, backbone, relational, images, prototypes)
            seconds = time_interleaved(fns, repeats=repeats, warmup=1)
            flops = n * resnet18_flops(size) + relational_flops(n * count)
            rows.append(
                {
                    "size": size,
                    "prototypes": count,
                    "test_images": n,
                    "threads": threads,
                    "jax_devices": jax.device_count(),
                    "jax_img_s": n / seconds["jax"],
                    "torch_img_s": n / seconds["torch"],
                    "speedup": seconds["torch"] / seconds["jax"],
                    "jax_gflop_s": flops / seconds["jax"] / 1e9,
                    "ceiling_gflop_s": ceiling,
                    "jax_pct_ceiling": 100 * flops / seconds["jax"] / 1e9 / ceiling,
                }
            )
    return rows
