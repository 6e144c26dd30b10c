"""ReSeND training: data parallelism, several hosts, resume, preemption, NaN stop, loss on real data."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
WORKER = str(ROOT / "tests" / "train_workers.py")


def env_with(devices: int, **extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def worker_job(mode: str, devices: int, partners: str = "images"):
    """A background job: ``train_workers.py`` on ``devices`` simulated devices; returns its output."""

    def job(background, directory: Path):
        out = directory / "out.npz"
        background.finish(
            background.popen([sys.executable, WORKER, mode, str(out), partners], env_with(devices))
        )
        return np.load(out)

    return job


def two_processes_job(background, directory: Path):
    """Two processes of four devices, one global mesh: process 0's and process 1's outputs."""
    address = f"127.0.0.1:{free_port()}"
    processes = [
        background.popen(
            [sys.executable, WORKER, "multi", str(directory / f"p{i}.npz")],
            env_with(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i),
        )
        for i in range(2)
    ]
    for process in processes:
        background.finish(process)
    return tuple(np.load(directory / f"p{i}.npz") for i in range(2))


def assert_same_run(a: dict, b: dict) -> None:
    """Equal up to float reduction order: |a - b| <= 1e-4 * max |b| + 1e-5 for every tensor.

    The absolute term covers biases that start at 0 and move by sums of cancelling terms.
    """
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    for key in a.files:
        if key.startswith("["):
            assert np.max(np.abs(a[key] - b[key])) <= 1e-4 * np.max(np.abs(b[key])) + 1e-5, key


def test_truncated_training_images_load_as_the_reference(tmp_path):
    """configs/resend_imagenet.py reads truncated JPEGs partially (LOAD_TRUNCATED_IMAGES); off,
    such a file is an error naming it."""
    import io

    from PIL import Image

    from resend_jax.data.sources import DataError
    from resend_jax.train.resend import train_source

    sys.path.insert(0, str(ROOT / "configs"))
    import resend_imagenet

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    config = resend_imagenet.get_config()
    config.data.train = f"folder:{tmp_path}"
    assert config.data.load_truncated_images
    assert train_source(config)[0]["image"].shape == (40, 56, 3)
    config.data.load_truncated_images = False
    with pytest.raises(DataError, match="cut.jpg"):
        train_source(config)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "partners",
    [
        pytest.param(p, marks=pytest.mark.background(f"train:1-{p}", f"train:8-{p}"))
        for p in ("images", "batch_prototypes")
    ],
)
def test_eight_devices_equal_one_device(background, partners):
    a, b = background.result(f"train:1-{partners}"), background.result(f"train:8-{partners}")
    assert int(a["devices"]) == 1 and int(b["devices"]) == 8
    assert_same_run(a, b)


@pytest.mark.background("train:2x4-images", "train:8-images")
def test_two_processes_of_four_devices_agree(background):
    """Against the single process of eight devices of ``test_eight_devices_equal_one_device``."""
    p0, p1 = background.result("train:2x4-images")
    s = background.result("train:8-images")
    assert int(p0["processes"]) == 2 and int(p0["devices"]) == 8
    assert_same_run(p0, p1)
    assert_same_run(p0, s)


def smoke_config(**overrides):
    sys.path.insert(0, str(ROOT / "configs"))
    import resend_fashion_mnist

    config = resend_fashion_mnist.get_config("smoke")
    # A constant rate after the warm-up: the resume tests change total_steps, which a decay to 0 fixes.
    overrides = {"lr_schedule": "constant", **overrides}
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def final_params(workdir: Path) -> dict:
    import resend_jax

    model = resend_jax.load_model(workdir)
    return {
        jax.tree_util.keystr(k): np.asarray(v)
        for k, v in jax.tree_util.tree_leaves_with_path(model.variables)
    }


def metric(workdir: Path, name: str) -> list:
    return [json.loads(line)[name] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def metrics_steps(workdir: Path) -> list[int]:
    return metric(workdir, "step")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The workdir of an uninterrupted 6-step smoke run."""
    from resend_jax.train.resend import train_and_evaluate

    workdir = tmp_path_factory.mktemp("straight")
    train_and_evaluate(smoke_config(total_steps=6), str(workdir))
    return workdir


def test_resume_equals_uninterrupted(straight, tmp_path):
    from resend_jax.train.resend import train_and_evaluate

    train_and_evaluate(smoke_config(total_steps=3), str(tmp_path / "resumed"))
    model_json = (tmp_path / "resumed" / "model.json").read_text()
    with pytest.raises(ValueError, match=r"model.depth: 1 in .*config.json, 2 now"):
        train_and_evaluate(smoke_config(total_steps=6, **{"model.depth": 2}), str(tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "model.json").read_text() == model_json
    train_and_evaluate(smoke_config(total_steps=6), str(tmp_path / "resumed"))
    assert metrics_steps(tmp_path / "resumed") == [1, 2, 3, 4, 5, 6]
    straight_params, resumed = final_params(straight), final_params(tmp_path / "resumed")
    for key, value in straight_params.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(metric(tmp_path / "resumed", "loss"), metric(straight, "loss"), rtol=1e-6)


def test_sigterm_writes_a_checkpoint_that_resumes(tmp_path):
    """SIGTERM saves, then ends the process by the signal (status 143 in a shell) so that a retry
    loop reruns it."""
    workdir = tmp_path / "w"
    command = [
        sys.executable,
        "-m",
        "resend_jax.train",
        "--config",
        "configs/resend_fashion_mnist.py:smoke",
        f"--workdir={workdir}",
        "--config.total_steps=1000",
        "--config.checkpoint_every=1000",
        "--config.lr_schedule=constant",  # resumed with another length below
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env_with(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or len(metrics_steps(workdir)) < 3:
        assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGTERM, output[-3000:]
    stopped_at = metrics_steps(workdir)[-1]
    assert 3 <= stopped_at < 1000 and f"SIGTERM: saved step {stopped_at}" in output
    from resend_jax.train.resend import train_and_evaluate

    train_and_evaluate(smoke_config(total_steps=stopped_at + 2), str(workdir))
    assert metrics_steps(workdir) == list(range(1, stopped_at + 3))


def train_command(workdir: Path, **flags) -> list[str]:
    """``python -m resend_jax.train`` with the smoke config and ``--config.KEY=VALUE`` flags."""
    command = [sys.executable, "-m", "resend_jax.train", "--config=configs/resend_fashion_mnist.py:smoke"]
    return [*command, f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())]


def diverged_job(background, directory: Path):
    process = background.popen(
        train_command(directory, total_steps=20, lr=1e30, warmup_steps=0, checkpoint_every=1), env_with(1)
    )
    output, _ = process.communicate(timeout=600)
    return process.returncode, output, directory


@pytest.mark.background("train:diverged")
def test_diverged_parameters_are_not_saved(background):
    """lr=1e30: the parameters after step 1 are finite (~1e30) but embed to NaN; the stop comes
    before their checkpoint and says that there is none."""
    from resend_jax.train import common

    returncode, output, workdir = background.result("train:diverged")
    last_line = output.strip().splitlines()[-1]
    assert returncode == 1, output[-3000:]
    assert re.match(
        "FloatingPointError: .*after step 1 have norm inf.*before any checkpoint was saved", last_line
    )
    with common.Checkpointer(workdir) as checkpointer:
        assert checkpointer.latest_step() is None


def test_init_from_must_be_given():
    """The reference starts from ImageNet weights: an empty init_from says how to get them."""
    from resend_jax.train.resend import train_and_evaluate

    sys.path.insert(0, str(ROOT / "configs"))
    import resend_imagenet

    with pytest.raises(ValueError, match="init_from is empty.*--torchvision_resnet18 resnet18-f37072fd.pth"):
        train_and_evaluate(resend_imagenet.get_config(), "/nonexistent/workdir")
    assert smoke_config().init_from == "none" == resend_imagenet.get_config("smoke").init_from


def smoke_loss_job(partners: str):
    """60 steps on two classes, without augmentation or rotation classes (see the test)."""

    def job(background, directory: Path) -> Path:
        flags = {
            "total_steps": 60,
            "checkpoint_every": 60,
            "lr": 3e-4,
            "data.known_classes": "1,5",
            "data.augment": False,
            "data.partners": partners,
            "data.rotation_classes": False,
            "data.neg_per_pos": 1 if partners == "images" else 10,
        }
        if partners == "images":  # whitening needs the classes of a batch, which image pairs lack
            flags["model.whitening"] = "none"
        background.finish(background.popen(train_command(directory, **flags), env_with(1)))
        return directory

    return job


@pytest.mark.parametrize(
    "partners",
    [
        pytest.param(p, marks=pytest.mark.background(f"train:smoke-loss-{p}"))
        for p in ("images", "batch_prototypes")
    ],
)
def test_smoke_loss_falls_on_fashion_mnist(background, partners):
    """The smoke config on real images of two known classes (Trouser, Sandal), learnt in 60 steps:
    the config's loss falls and the pair accuracy (0.5 for a constant answer) rises (from 0.91
    over the first 15 steps with batch prototypes: the relation starts as the cosine). Without
    rotation classes and, for image pairs, with one negative per positive: otherwise the balanced
    loss hardly moves in 60 steps of 16 (to 0.99 and 0.83 of its start)."""
    workdir = background.result(f"train:smoke-loss-{partners}")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([r["loss"] for r in records])
    accuracy = np.array([r["pair_accuracy"] for r in records])
    assert len(losses) == 60
    assert losses[-15:].mean() < 0.8 * losses[:15].mean()
    if partners == "images":
        assert accuracy[-15:].mean() > 0.75 and accuracy[-15:].mean() > accuracy[:15].mean() + 0.1
    else:  # the cosine residual starts at the cosine to the prototypes, which already separates them
        assert accuracy[-15:].mean() > 0.95 and accuracy[-15:].mean() > accuracy[:15].mean() + 0.03
    rate = "pairs_per_second" if partners == "images" else "images_per_second"
    assert {"loss", "pair_accuracy", "lr", "grad_norm", "param_norm", rate} <= set(records[-1])
    config = json.loads((workdir / "config.json").read_text())
    assert (config["data"]["partners"], config["data"]["known_classes"]) == (partners, "1,5")
    assert (workdir / "model.json").is_file()


BACKGROUND_JOBS = {
    **{
        f"train:{devices}-{partners}": worker_job("single", devices, partners)
        for devices in (1, 8)
        for partners in ("images", "batch_prototypes")
    },
    "train:2x4-images": two_processes_job,
    "train:diverged": diverged_job,
    "train:smoke-loss-images": smoke_loss_job("images"),
    "train:smoke-loss-batch_prototypes": smoke_loss_job("batch_prototypes"),
}


def test_init_from_a_model_directory(straight, tmp_path):
    """One step from ``straight``'s model: the warm-up's learning rate is 0 at step 0, so the
    parameters after it are the pretrained ones (the step program is ``straight``'s)."""
    from resend_jax.train.resend import train_and_evaluate

    train_and_evaluate(smoke_config(total_steps=1, init_from=str(straight)), str(tmp_path / "b"))
    assert metric(tmp_path / "b", "lr") == [0.0]
    pretrained, started = final_params(straight), final_params(tmp_path / "b")
    params = [k for k in pretrained if k.startswith("['params']")]
    assert len(params) > 50
    for key in params:
        np.testing.assert_array_equal(started[key], pretrained[key], err_msg=key)
    # The step did run: it updated the batch-norm statistics.
    stats = [k for k in pretrained if k.startswith("['batch_stats']")]
    assert any(not np.array_equal(started[k], pretrained[k]) for k in stats)


def test_batch_prototype_pairs_match_a_loop():
    """Positives: the leave-one-out mean of the image's class; negatives: other present classes."""
    from resend_jax.models import ReSeND, build_resend
    from resend_jax.train.resend import batch_prototype_logits

    model = build_resend({"embed_dim": 32, "depth": 1, "num_heads": 2})
    labels = np.array([0, 0, 0, 2, 2, 3, 0, 2, 3, 5])  # classes 1 and 4 absent; class 3 has 2 images
    images = jax.random.normal(jax.random.PRNGKey(0), (len(labels), 32, 32, 3))
    # An rbg key: the same initialisers, compiled in a third of threefry's 22 s.
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), images[:1], images[:1])
    batch = {"images": images[:, None], "label": labels}
    logits, targets, weights, _ = jax.jit(
        partial(batch_prototype_logits, model, num_classes=6, neg_per_pos=2)
    )(variables, batch, jax.random.PRNGKey(2))
    embed = jax.jit(partial(model.apply, train=True, method=ReSeND.embed, mutable=["batch_stats"]))
    features = np.asarray(embed(variables, images)[0])
    relate_pairs = jax.jit(partial(model.apply, method=ReSeND.relate))

    def relate(a, b):  # one pair at a time
        return float(relate_pairs({"params": variables["params"]}, a[None], b[None])[0])

    assert logits.shape == targets.shape == weights.shape == (len(labels), 3)
    np.testing.assert_array_equal(targets[:, 0], 0)
    np.testing.assert_array_equal(targets[:, 1:], 1)
    for i, y in enumerate(labels):
        others = [j for j in range(len(labels)) if labels[j] == y and j != i]
        assert weights[i, 0] == (len(others) > 0)  # class 5 has one image: no positive
        if others:
            np.testing.assert_allclose(logits[i, 0], relate(features[i], features[others].mean(0)), atol=1e-5)
        negative = {c: relate(features[i], features[labels == c].mean(0)) for c in set(labels) - {y}}
        matched = [min(negative, key=lambda c: abs(negative[c] - float(v))) for v in logits[i, 1:]]
        assert len(set(matched)) == 2 and weights[i, 1:].all()
        for c, v in zip(matched, logits[i, 1:]):
            np.testing.assert_allclose(v, negative[c], atol=1e-5)


def test_rotations_become_classes():
    from resend_jax.train.resend import rotations_as_classes

    images = np.random.default_rng(0).standard_normal((64, 5, 5, 3)).astype(np.float32)
    labels = np.arange(64) % 3
    rotated, new_labels, num_classes = rotations_as_classes(images, labels, 3, jax.random.PRNGKey(0))
    turns = (np.asarray(new_labels) - labels) // 3
    assert num_classes == 12 and set(turns) == {0, 1, 2, 3}
    np.testing.assert_array_equal(np.asarray(new_labels) % 3, labels)
    for image, out, k in zip(images, np.asarray(rotated), turns):
        np.testing.assert_array_equal(out, np.rot90(image, k, axes=(0, 1)))
