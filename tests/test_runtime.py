"""runtime: one JAX device per core, and the XLA:CPU compiler options every model jit uses."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resend_jax import runtime

REPO = Path(__file__).parent.parent


def _python(code: str, env: dict[str, str]) -> str:
    """Runs ``code`` in a fresh interpreter (JAX's backend starts once per process); its stdout."""
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    "env, expected", [({}, len(os.sched_getaffinity(0))), ({"JAX_NUM_CPU_DEVICES": "3"}, 3)]
)
def test_use_cpu_cores(env, expected):
    """0 = one device per core, unless the user's environment already sets a count."""
    code = "from resend_jax import runtime; runtime.use_cpu_cores(0); import jax; print(jax.device_count())"
    assert int(_python(code, env).split()[-1]) == expected


def test_jit_sends_convolutions_to_eigen_with_the_same_numbers():
    """Under ``runtime.jit`` a layer1-sized convolution and its gradients compile without a
    YNNPACK fusion, and equal plain ``jax.jit``'s."""
    assert runtime.compiler_options() == runtime.CPU_COMPILER_OPTIONS

    def loss(x, w):
        y = lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jnp.square(y - jnp.mean(y, (0, 1, 2))))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 56, 56, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)) * 0.05, jnp.float32)
    grad = jax.grad(loss, (0, 1))
    hlo = runtime.jit(grad).lower(x, w).compile().as_text()
    assert hlo.count("convolution(") == 3  # forward, kernel gradient, input gradient
    ynn_bodies = re.findall(r"calls=%([\w.-]+), [^\n]*__ynn_fusion", hlo)
    assert ynn_bodies  # the reductions
    for body in ynn_bodies:
        computation = hlo.split(f"%{body} ", 1)[1].split("\n}", 1)[0]
        assert "convolution(" not in computation, body
    for ours, plain in zip(runtime.jit(grad)(x, w), jax.jit(grad)(x, w)):
        np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-4 * float(jnp.abs(plain).max()))


def test_xla_flags_switch_the_options_off():
    """A user who names the option in XLA_FLAGS gets XLA's setting, not ours."""
    flags = {"XLA_FLAGS": f"--{runtime.YNN_OPTION}=individual_dot"}
    code = "from resend_jax import runtime; print(runtime.compiler_options())"
    assert _python(code, flags).split()[-1] == "None"
