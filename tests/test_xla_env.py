"""XLA flag defaults: added once, never overriding the user's, opt-out honoured;
the persistent compilation cache: which folder, off, and that programs land there."""

import os
import subprocess
import sys

from darts_jax import xla_env


def test_adds_defaults_once_and_keeps_user_flags():
    env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
    assert xla_env.configure(env) == (
        "--xla_cpu_foo=1 --xla_gpu_enable_triton_gemm=false "
        "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"
    )
    assert xla_env.configure(env) == env["XLA_FLAGS"]  # idempotent
    user = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
    assert xla_env.configure(user) == (
        "--xla_gpu_enable_triton_gemm=true --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"
    )
    assert xla_env.configure({"DARTS_JAX_XLA_DEFAULTS": "0"}) == ""


def test_cpu_backend_accepts_the_flags():
    code = (
        "from darts_jax import xla_env; xla_env.configure(); import jax.numpy as jnp; "
        "print(float(jnp.ones(3).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.0"


def test_compilation_cache_folder(tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        mine = str(tmp_path / "mine")
        assert xla_env.enable_compilation_cache({"DARTS_JAX_CACHE_DIR": mine}) == mine
        assert jax.config.jax_compilation_cache_dir == mine
        jax_own = {"JAX_COMPILATION_CACHE_DIR": "/x/jax"}
        assert xla_env.enable_compilation_cache(jax_own) == "/x/jax"
        xdg = {"XDG_CACHE_HOME": str(tmp_path)}
        assert xla_env.enable_compilation_cache(xdg) == str(tmp_path / "darts_jax" / "xla")
        for off in ("off", "0", ""):
            assert xla_env.enable_compilation_cache({"DARTS_JAX_CACHE_DIR": off}) is None
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "darts_jax" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_compiled_programs_land_in_the_cache(tmp_path):
    code = (
        "from darts_jax import xla_env; import jax, jax.numpy as jnp; "
        "xla_env.enable_compilation_cache(); "
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
        "print(float(jax.jit(lambda x: jnp.sin(x).sum())(jnp.ones(3))))"
    )
    env = {**os.environ, "DARTS_JAX_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert any((tmp_path / "cache").iterdir())
