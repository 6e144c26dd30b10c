"""Model throughput, JAX against PyTorch with the same weights and threads, each in its own process.

Rows, at 32, 64 and 224 px (ImageNet stem):
- ``embed``: the backbone in eval mode (running BN statistics), images -> (N, 512) features,
  jitted in JAX and under ``torch.no_grad`` in PyTorch;
- ``train``: one forward and backward pass of the backbone with batch-statistic BN and a
  scalar loss on the features (gradients of every parameter; no optimizer update);
- ``relate_all``: the relational transformer on every (test, prototype) pair, as the eval
  scores them (512 test features x 10 prototypes), against the reference module on the same
  pairs in one batch; rates are pairs per second.
Each round runs one JAX process, then one PyTorch process (``common.run_rounds``); each times
every row, median of ``repeats`` calls after ``common.WARMUP`` (``compile_s``: what the warm-up
took beyond as many timed calls). ``ratio`` is the median over rounds of PyTorch's time / JAX's
time in the same round, ``ratio_min`` and ``ratio_max`` its extremes; the rates are medians
over rounds. PyTorch runs as ``common.TorchMode`` says (eager float32, or ``--torch-compile``).
GFLOP/s use nominal FLOPs (``common.resnet18_flops``, x3 for ``train``;
``common.relational_flops``) and are compared with the faster of the two frameworks' matmuls,
each measured in its own processes, in its compute dtype. Batches are larger on a GPU.
With several JAX devices (``--cpu_devices``, one per core by default), ``embed`` and ``train``
are also timed with the batch split over all of them (``jax_all``, ``ratio_all``), as
``NoveltyModel`` and ``python -m resend_jax.evaluate`` run, in the same JAX process.
"""

from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_reference as ref
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks.common import (
    ON_GPU,
    TORCH_DEVICE,
    TorchMode,
    child_main,
    matmul_ceiling_gflops,
    paired,
    relational_flops,
    resnet18_flops,
    run_rounds,
    time_calls,
    torch_sync,
)
from resend_jax import runtime
from resend_jax.convert_torch import convert, merge_backbone_copies
from resend_jax.models import DTYPES, ReSeND, ResNet18, build_resend
from resend_jax.train.common import data_mesh

BATCH = {32: 1024, 64: 512, 224: 256} if ON_GPU else {32: 64, 64: 64, 224: 32}
RELATE_TESTS = 4096 if ON_GPU else 512
PROTOTYPES = 10
FLOPS_FACTOR = {"embed": 1, "train": 3}  # a backward pass costs about twice the forward


def run(args) -> list[dict]:
    sizes = (32, 64) if args.quick else (32, 64, 224)
    config = {
        "dtype": args.dtype,
        "torch_compile": args.torch_compile,
        "repeats": 3 if args.quick else 7,
        "sizes": [[size, BATCH[size]] for size in sizes],
        "tasks": list(FLOPS_FACTOR),
        "relate_tests": RELATE_TESTS,
    }
    return measure_rounds(config, rounds=2 if args.quick else 3, devices=len(jax.devices("cpu")))


def measure_rounds(config: dict, rounds: int, devices: int) -> list[dict]:
    """The table: ``rounds`` rounds of a JAX process (``devices`` CPU devices) and a PyTorch one.

    ``config``: ``dtype``, ``torch_compile``, ``repeats``, ``sizes`` ([px, batch] pairs),
    ``tasks`` (of ``FLOPS_FACTOR``) and ``relate_tests`` (0: no ``relate_all`` row).
    """
    runs = run_rounds("model", {"jax": ("jax", devices), "torch": ("torch", devices)}, config, rounds)
    jax_runs, torch_runs = runs["jax"], runs["torch"]
    ceiling = max(float(np.median([r["matmul_gflop_s"] for r in framework])) for framework in runs.values())
    load = max(r["load_1min"] for framework in runs.values() for r in framework)
    rows = []
    for key in jax_runs[0]["rows"]:
        task, size, batch = key.split("/")
        size, batch = int(size), int(batch)
        if task == "relate_all":
            n, unit, flops = batch * PROTOTYPES, "pairs", relational_flops(batch * PROTOTYPES)
        else:
            n, unit, flops = batch, "img", FLOPS_FACTOR[task] * batch * resnet18_flops(size)
        seconds = {
            name: [r["rows"][key]["seconds"][name] for r in jax_runs]
            for name in jax_runs[0]["rows"][key]["seconds"]
        }
        seconds["torch"] = [r["rows"][key]["seconds"]["torch"] for r in torch_runs]
        median = {name: float(np.median(s)) for name, s in seconds.items()}
        row = {
            "task": task,
            "size": size,
            "batch": n,
            f"jax_{unit}_s": n / median["jax"],
            f"torch_{unit}_s": n / median["torch"],
            **paired(seconds["jax"], seconds["torch"]),
            "jax_gflop_s": flops / median["jax"] / 1e9,
            "torch_gflop_s": flops / median["torch"] / 1e9,
            "ceiling_gflop_s": ceiling,
            "jax_pct_ceiling": 100 * flops / median["jax"] / 1e9 / ceiling,
        }
        if "jax_all" in median:  # the same work data-parallel over every device of the JAX process
            row |= {
                "devices": devices,
                f"jax_all_{unit}_s": n / median["jax_all"],
                **paired(seconds["jax_all"], seconds["torch"], "ratio_all"),
                "jax_all_pct_ceiling": 100 * flops / median["jax_all"] / 1e9 / ceiling,
            }
        compile_s = {name: runs[name][0]["rows"][key]["compile_s"] for name in runs}  # round 1
        rows.append(
            row
            | {f"{name}_compile_s": s for name, s in compile_s.items()}
            | {"rounds": rounds, "load_1min": load}  # the highest the processes saw
        )
    return rows


def measure(framework: str, config: dict) -> dict:
    """One process's timings of every row, and its framework's matmul GFLOP/s (``child_main``)."""
    backbone, relational = _reference_modules()
    if framework == "jax":
        calls, dtype = _jax_calls(backbone, relational, config), config["dtype"]
    else:
        mode = TorchMode(config["torch_compile"], config["dtype"])
        calls, dtype = _torch_calls(mode, backbone, relational, config), mode.compute_dtype
    rows = {}
    for key, fns in calls:
        timed = time_calls(fns, config["repeats"])
        rows[key] = {
            "seconds": {name: t["seconds"] for name, t in timed.items()},
            "compile_s": timed[framework]["compile_s"],
        }
    gflops = matmul_ceiling_gflops(dtype, repeats=3, frameworks=(framework,))[framework]
    return {"rows": rows, "matmul_gflop_s": gflops}


def _reference_modules() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The PyTorch reference backbone and relational module on the CPU, seeded: one set of weights."""
    torch.manual_seed(0)
    backbone, relational = ref.ResNetFc(), ref.RelationalTransformer().eval()
    ref.randomise_batch_norm(backbone, torch.Generator().manual_seed(0))
    return backbone, relational


def _images(size: int, batch: int) -> np.ndarray:
    return np.random.default_rng(size).standard_normal((batch, size, size, 3), np.float32)


def _relate_inputs(tests: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((tests, 512), np.float32), rng.standard_normal((PROTOTYPES, 512), np.float32)


def _jax_calls(backbone, relational, config: dict) -> Iterator[tuple[str, dict]]:
    """(row key, {"jax": call on device 0, "jax_all": call over every device}) per row."""
    backbone_state, relational_state = (
        {k: v.numpy() for k, v in m.state_dict().items()} for m in (backbone, relational)
    )
    variables = convert(merge_backbone_copies(backbone_state, "reference"), relational_state)
    backbone_variables = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
    module = ResNet18(dtype=DTYPES[config["dtype"]])
    embed = runtime.jit(lambda v, x: module.apply(v, x))

    def loss(params, batch_stats, x):
        features, updates = module.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(features)), updates["batch_stats"]

    grad = runtime.jit(jax.grad(loss, has_aux=True))
    tasks = {
        "embed": lambda v, x: embed(v, x).block_until_ready(),
        "train": lambda v, x: jax.block_until_ready(grad(v["params"], v["batch_stats"], x)),
    }
    for size, batch in config["sizes"]:
        placed = _placements(backbone_variables, _images(size, batch))
        for task in config["tasks"]:
            yield f"{task}/{size}/{batch}", {name: partial(tasks[task], *p) for name, p in placed.items()}
    if config["relate_tests"]:
        resend = build_resend({"dtype": config["dtype"]})
        relate_all = runtime.jit(lambda v, f, p: resend.apply(v, f, p, method=ReSeND.relate_all))
        v, f, p = jax.device_put((variables, *_relate_inputs(config["relate_tests"])), jax.devices()[0])
        yield (
            f"relate_all/0/{config['relate_tests']}",
            {"jax": lambda: relate_all(v, f, p).block_until_ready()},
        )


def _placements(variables, images: np.ndarray) -> dict:
    """``{"jax": (variables, images) on one device}``, plus ``"jax_all"``: the batch split over
    every device of the process (``--cpu_devices``, when they divide it) with the variables
    replicated."""
    placed = {"jax": (jax.device_put(variables, jax.devices()[0]), jax.device_put(images, jax.devices()[0]))}
    if jax.device_count() > 1 and len(images) % jax.device_count() == 0:
        mesh = data_mesh()
        placed["jax_all"] = (
            jax.device_put(variables, NamedSharding(mesh, PartitionSpec())),
            jax.device_put(images, NamedSharding(mesh, PartitionSpec("data"))),
        )
    return placed


def _torch_calls(mode: TorchMode, backbone, relational, config: dict) -> Iterator[tuple[str, dict]]:
    """(row key, {"torch": call}) per row, the modules run as ``mode`` says."""
    backbone, relational = mode.prepare(backbone), mode.prepare(relational)
    run_backbone, run_relational = mode.compiled(backbone), mode.compiled(relational)

    def embed(x):
        backbone.eval()
        with torch.no_grad(), mode.autocast():
            torch_sync(run_backbone(x))

    def train(x):
        backbone.train()
        backbone.zero_grad(set_to_none=True)
        with mode.autocast():
            loss = run_backbone(x).float().square().mean()
        loss.backward()
        torch_sync()

    tasks = {"embed": embed, "train": train}
    for size, batch in config["sizes"]:
        x = mode.images(torch.from_numpy(_images(size, batch).transpose(0, 3, 1, 2).copy()))
        for task in config["tasks"]:
            yield f"{task}/{size}/{batch}", {"torch": partial(tasks[task], x)}
    if config["relate_tests"]:
        features, prototypes = (torch.from_numpy(a) for a in _relate_inputs(config["relate_tests"]))
        pairs = torch.cat(
            [features.repeat_interleave(PROTOTYPES, 0), prototypes.repeat(len(features), 1)], 1
        ).to(TORCH_DEVICE)

        def relate():
            with torch.no_grad(), mode.autocast():
                torch_sync(run_relational(pairs))

        yield f"relate_all/0/{config['relate_tests']}", {"torch": relate}


if __name__ == "__main__":
    child_main(measure)
