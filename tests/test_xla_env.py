"""XLA flag defaults: added once, never overriding the user's, opt-out honoured."""

import subprocess
import sys

from darts_jax import xla_env


def test_adds_defaults_once_and_keeps_user_flags():
    env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
    assert xla_env.configure(env) == "--xla_cpu_foo=1 --xla_gpu_enable_triton_gemm=false"
    assert xla_env.configure(env) == env["XLA_FLAGS"]  # idempotent
    user = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
    assert xla_env.configure(user) == "--xla_gpu_enable_triton_gemm=true"
    assert xla_env.configure({"DARTS_JAX_XLA_DEFAULTS": "0"}) == ""


def test_cpu_backend_accepts_the_flags():
    code = (
        "from darts_jax import xla_env; xla_env.configure(); import jax.numpy as jnp; "
        "print(float(jnp.ones(3).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.0"
