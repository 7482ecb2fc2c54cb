"""Shared test setup: tiny configurations and a persistent XLA cache for the session."""

import os
import tempfile

from darts_jax import xla_env

# The XLA flags the scripts run with (before JAX starts, like them).
xla_env.configure()

# Eight CPU devices for the data-parallel tests (tests/test_parallel.py); every
# other test runs on device 0 as a one-device run does. Set before JAX starts.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

# Tests compile hundreds of programs and run each once or twice on tiny shapes:
# skip XLA's costly LLVM optimizations (a third off the compile-heavy tests'
# time, BENCHMARKS.md, session 21). The values do not change: the scripts and the
# benchmark keep full optimization. DARTS_JAX_TEST_OPTIMIZE=1 tests with it.
if os.environ.get("DARTS_JAX_TEST_OPTIMIZE", "0") != "1":
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # also for the scripts the tests start

import jax  # noqa: E402
import pytest  # noqa: E402

# Reuse compiled programs between tests (and between e2e runs that build the
# same step); compiles dominate the suite's time on 2 cores.
_cache = os.environ.get(
    "DARTS_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "darts_jax_test_xla_cache")
)
os.environ["DARTS_JAX_CACHE_DIR"] = _cache  # the scripts' own cache: the same folder
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="module")
def torch_one_thread():
    """PyTorch on one thread for tiny shapes: OpenMP threads only add overhead,
    and spin-waiting threads slow down a hundredfold on a busy 2-core machine."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
