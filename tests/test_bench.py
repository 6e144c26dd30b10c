"""The benchmarks: their FLOP counts against the model itself, each framework timed in a process
of its own, and PyTorch set up as its best users write it (``--torch-compile``)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref

from resend_jax.models import ResNet18, layers

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from benchmarks import model, train  # noqa: E402
from benchmarks.common import ChildFailed, TorchMode, paired, resnet18_flops, run_rounds  # noqa: E402


def _conv_flops(jaxpr) -> int:
    """2 x output elements x kernel taps x input channels, summed over every convolution."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * kernel[0] * kernel[1] * kernel[2]
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _conv_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _conv_flops(sub)
    return total


@pytest.mark.parametrize("size, stem", [(32, "imagenet"), (64, "imagenet"), (224, "imagenet"), (32, "cifar")])
def test_resnet18_flops_count_the_model_convolutions(size, stem, monkeypatch):
    """Every convolution through lax (no patch matmul), counted from the traced forward pass."""
    monkeypatch.setattr(layers, "IM2COL_MAX_PIXELS", 0)
    model = ResNet18(stem=stem)
    images = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    jaxpr = jax.make_jaxpr(model.apply)(variables, images).jaxpr
    assert resnet18_flops(size, stem) == _conv_flops(jaxpr)


def test_resnet18_flops_at_224_px_is_the_published_count():
    """1.81 G multiply-adds (He et al. 2016, table 1: 1.8 x 10^9 FLOPs counted as multiply-adds)."""
    np.testing.assert_allclose(resnet18_flops(224) / 2, 1.814e9, rtol=2e-3)


def test_model_benchmark_times_jax_and_pytorch_each_in_a_process_of_its_own():
    """One round of a JAX process and a PyTorch process on the smallest config: a row with both rates."""
    config = {"dtype": "float32", "torch_compile": False, "repeats": 1, "sizes": [[32, 2]]}
    (row,) = model.measure_rounds(config | {"tasks": ["embed"], "relate_tests": 0}, rounds=1, devices=1)
    assert (row["task"], row["size"], row["batch"], row["rounds"]) == ("embed", 32, 2, 1)
    assert row["jax_img_s"] > 0 and row["torch_img_s"] > 0 and row["ceiling_gflop_s"] > 0
    assert row["ratio"] == pytest.approx(row["jax_img_s"] / row["torch_img_s"])
    assert row["jax_compile_s"] >= 0 and row["torch_compile_s"] >= 0


def test_the_ratio_is_the_median_of_the_rounds_paired_ratios():
    """Not the ratio of medians: each PyTorch time is divided by the JAX time of its own round."""
    assert paired([1.0, 2.0, 4.0], [2.0, 2.0, 2.0]) == {"ratio": 1.0, "ratio_min": 0.5, "ratio_max": 2.0}
    assert paired([1.0], [3.0], "ratio_all") == {"ratio_all": 3.0, "ratio_all_min": 3.0, "ratio_all_max": 3.0}


def test_a_failed_benchmark_process_is_one_message_with_the_command_to_rerun_it():
    config = {"dtype": "float32", "torch_compile": True, "repeats": 1, "sizes": [[32, 2]], "tasks": ["nope"]}
    with pytest.raises(ChildFailed) as failed:
        run_rounds("model", {"torch": ("torch", 1)}, config | {"relate_tests": 0}, rounds=1)
    message = str(failed.value)
    assert message.startswith("the model benchmark's torch process failed: KeyError: 'nope'")
    assert "inductor" in message and "python -m benchmarks.model torch" in message
    assert "Traceback" not in message


def test_torch_compile_mode_runs_channels_last_under_bfloat16_autocast():
    """``--torch-compile``'s set-up, checked without compiling (that takes minutes on 2 cores)."""
    mode = TorchMode(compile=True, dtype="bfloat16")
    backbone = mode.prepare(ref.ResNetFc())
    assert backbone.model_resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(mode.compiled(backbone), torch._dynamo.eval_frame.OptimizedModule)
    assert mode.images(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    with mode.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert mode.compute_dtype == "bfloat16" and TorchMode(dtype="bfloat16").compute_dtype == "float32"
    with TorchMode(compile=True).autocast():  # float32: no autocast
        assert not torch.is_autocast_enabled("cpu")


def test_branch_free_lars_preconditioning_is_the_reference_loop():
    """The compiled step's LARS preconditioning, on gradients and weights of zero norm too."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(4, 3, generator=generator), torch.zeros(5), torch.randn(6, generator=generator)]
    grads = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator), torch.zeros(6)]
    preconditioned = []
    for branch_free in (False, True):
        parameters = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(parameters, grads):
            p.grad = g.clone()
        train.lars_precondition_(parameters, branch_free)
        preconditioned.append([p.grad for p in parameters])
    for reference, branch_free in zip(*preconditioned, strict=True):
        torch.testing.assert_close(branch_free, reference)
    assert not torch.equal(preconditioned[0][0], grads[0])  # the first one was rescaled


def test_compiled_train_step_runs_its_two_functions_under_autocast(monkeypatch):
    """The ``--torch-compile`` step in eager (``torch.compile`` left out): forward pass and loss
    under bfloat16 autocast in channels_last, backward, then the preconditioning and SGD."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(fn) or fn)
    torch.manual_seed(0)
    train._torch_step(32, 2, np.array([1.0, 0.0], np.float32), TorchMode(compile=True, dtype="bfloat16"))()
    assert len(compiled) == 2
