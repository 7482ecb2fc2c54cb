"""XLA flag defaults: added once, never overriding the user's, opt-out honoured;
the persistent compilation cache: which folder, off, and that programs land there."""

import ctypes.util
import os
import subprocess
import sys

import pytest

from darts_jax import xla_env


def test_adds_defaults_once_and_keeps_user_flags():
    env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
    ynn = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
    assert xla_env.configure(env) == (
        "--xla_cpu_foo=1 --xla_gpu_enable_triton_gemm=false "
        f"--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE {ynn}"
    )
    assert xla_env.configure(env) == env["XLA_FLAGS"]  # idempotent
    user = {
        "XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true --xla_cpu_experimental_ynn_fusion_type="
    }
    assert xla_env.configure(user) == (
        "--xla_gpu_enable_triton_gemm=true --xla_cpu_experimental_ynn_fusion_type= "
        "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE"
    )
    assert xla_env.configure({"DARTS_JAX_XLA_DEFAULTS": "0"}) == ""


def test_final_program_hands_ynnpack_products_only():
    flags = xla_env.configure({}, program="final")
    assert "--xla_cpu_experimental_ynn_fusion_type=dot" in flags.split()
    assert "eltwise" not in flags
    assert "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE" in flags.split()
    search = xla_env.configure({}, program="search")
    assert search == xla_env.configure({})  # search is the default
    assert "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce" in search.split()
    # The user's own choice wins over either program's default.
    user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise"}
    assert xla_env.configure(user, program="final").count("ynn_fusion_type") == 1
    with pytest.raises(ValueError, match="unknown program 'augment'"):
        xla_env.configure({}, program="augment")


def test_cpu_backend_accepts_the_flags():
    code = (
        "from darts_jax import xla_env; xla_env.configure(); import jax.numpy as jnp; "
        "print(float(jnp.ones(3).sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.0"


def test_float32_results_match_with_and_without_the_defaults():
    # Our defaults (YNNPACK for products, elementwise work, reductions) against jax's own.
    code = (
        "from darts_jax import xla_env; xla_env.configure(); import jax, jax.numpy as jnp; "
        "x = jax.random.normal(jax.random.PRNGKey(0), (64, 96)); "
        "w = jax.random.normal(jax.random.PRNGKey(1), (96, 48)); "
        "f = jax.jit(jax.value_and_grad(lambda w: jnp.tanh(x @ w).mean() + jnp.exp(-w * w).sum())); "
        "v, g = f(w); print(repr(float(v)), repr(float(jnp.abs(g).sum())))"
    )

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "XLA_FLAGS": "", **env},  # not the suite's own flags
        )
        return [float(t) for t in out.stdout.split()]

    with_defaults = run()
    without = run(DARTS_JAX_XLA_DEFAULTS="0")
    assert with_defaults == pytest.approx(without, rel=1e-5)


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


def test_hugepage_env_adds_the_tunable_once(tmp_path, monkeypatch):
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(xla_env, "_THP_MODE", str(mode))
    env = xla_env.hugepage_env({"PATH": "/bin"}, "linux")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert xla_env.hugepage_env(env, "linux") is None  # the restarted process goes on
    other = xla_env.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, "linux")
    assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert xla_env.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux") is None
    assert xla_env.hugepage_env({"DARTS_JAX_HUGEPAGES": "0"}, "linux") is None
    assert xla_env.hugepage_env({}, "darwin") is None
    mode.write_text("always madvise [never]\n")
    assert xla_env.hugepage_env({}, "linux") is None
    monkeypatch.setattr(xla_env, "_THP_MODE", str(tmp_path / "missing"))
    assert xla_env.hugepage_env({}, "linux") is None


def test_restart_reexecutes_once_with_the_same_arguments():
    code = (
        "import os, sys; from darts_jax import xla_env; print('start', flush=True); "
        "xla_env.restart_with_hugepages(); "
        "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DARTS_JAX_HUGEPAGES")
    }
    expected = xla_env.hugepage_env(env)
    out = subprocess.run(
        [sys.executable, "-c", code, "a", "--b"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    if expected is None:  # nothing to do on this machine: no restart
        assert out == ["start", "None ['a', '--b']"]
    else:
        assert out == ["start", "start", "glibc.malloc.hugetlb=1 ['a', '--b']"]


_PRELOADABLE = {name: ctypes.util.find_library(name) for name in ("tcmalloc_minimal", "jemalloc")}


@pytest.mark.parametrize(
    "allocator, block_kb, n_blocks",
    [(None, 64, 3000), ("tcmalloc_minimal", 1024, 200), ("jemalloc", 1024, 200)],
    ids=["glibc", "tcmalloc", "jemalloc"],
)
def test_release_freed_memory_returns_the_heap_the_allocator_keeps(allocator, block_kb, n_blocks):
    """Freed blocks stay resident until released: glibc's below the heap's top,
    tcmalloc's and jemalloc's (preloaded, as a user may) in their free page lists
    (run in a subprocess: a clean heap, and this one's left alone)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if allocator is not None:
        if not _PRELOADABLE[allocator]:
            pytest.skip(f"lib{allocator} is not installed")
        env["LD_PRELOAD"] = _PRELOADABLE[allocator]
    code = f"""
import ctypes, os
from darts_jax import xla_env
process = ctypes.CDLL(None)  # the malloc that serves this process
process.malloc.restype = ctypes.c_void_p
process.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
size = {block_kb} * 1024
blocks = [process.malloc(size) for _ in range({n_blocks} + 1)]  # about 200 MB
for b in blocks:
    ctypes.memset(b, 1, size)
guard = blocks.pop()  # the last block keeps glibc's freed ones below the heap's top
before = rss_mb()
for b in blocks:
    process.free(b)
kept = rss_mb()
released = xla_env.release_freed_memory()
print(released, round(before), round(kept), round(rss_mb()))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    released, before, kept, after = out.stdout.split()
    assert released == "True"
    if allocator is None:
        assert float(kept) > float(before) - 20, out.stdout  # glibc kept what was freed
        assert float(after) < float(kept) - 150, out.stdout  # and handed it back
    else:  # jemalloc hands back part of it by itself
        assert float(kept) > float(after) + 50, out.stdout
        assert float(after) < float(before) - 150, out.stdout  # and all of it now


def test_release_freed_memory_without_a_c_library(monkeypatch):
    def no_libc(*args, **kwargs):
        raise OSError("no C library")

    monkeypatch.setattr(xla_env.ctypes, "CDLL", no_libc)
    assert xla_env.release_freed_memory() is False


def test_the_suite_compiles_in_fast_compile_mode():
    """conftest: tests and the scripts they start compile without XLA's costly
    LLVM optimizations, unless DARTS_JAX_TEST_OPTIMIZE=1 asks for them."""
    if os.environ.get("DARTS_JAX_TEST_OPTIMIZE") == "1":
        pytest.skip("the run asked for full optimization")
    import jax

    assert jax.config.read("jax_disable_most_optimizations") is True
    assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"  # inherited by subprocesses
