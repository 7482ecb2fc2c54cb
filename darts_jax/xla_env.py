"""XLA flags darts_jax adds before JAX creates its backend, and why.

``--xla_gpu_enable_triton_gemm=false``: on an H200 with jax 0.11.2 the XLA GPU
compiler aborted on the search step (test config, first order) with
``triton_tiling_propagation.cc: Check failed: subdim_size_accumulator ==
dim_size (64 vs. 16)``, a known XLA bug in Triton GEMM fusion for small CNN
shapes (openxla/xla#47381, jax-ml/jax#34010) whose suggested workaround is to
keep such fusions off Triton (cuBLAS instead). The flag also spares the
autotuning of Triton GEMM configurations. It only affects GPU backends. With
it every search and final step compiled and ran on the H200 (BENCHMARKS.md,
session 12).

``--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE``: XLA:CPU's preset for
fast compiles made the search steps both compile and run faster on this
project's 2-core CPU (default config, same hour, one run each: second order
109.7-109.9 s -> 98.3 s to compile and 67.1-68.8 s -> 58.7 s per step;
first order 66.7 s -> 57.4 s and 23.6 s -> 22.8 s; with ``--remat cells``
146.7-155.8 s -> 132.3 s and 71.9-75.5 s -> 65.7 s). It only affects the
CPU backend (on GPU machines, XLA's host-side programs). XLA aborts on a
flag it does not know: the requirements ask for jax >= 0.10.2, where this one
was measured; if a later jaxlib drops it, ``DARTS_JAX_XLA_DEFAULTS=0`` runs
without the defaults.

``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce``: XLA:CPU
hands matrix products, elementwise fusions and reductions to YNNPACK, its
newer kernel library (jax 0.10.2's default hands it less). On this
project's 2-core CPU (BENCHMARKS.md, session 12), against YNNPACK off (the
flag set empty): one default-network gradient pass 3.45-4.54 s against
4.36-5.23 s at batch 16 (three alternating pairs) and 16.1-16.8 s against
17.1-20.3 s at batch 64 (two pairs); the default second-order step 130.8 s
to compile and 66.7 s per step against 162.6 s and 70.3 s (one pair); the
test config's second-order compile peaks at 1.73 GB instead of 2.67 GB. It
costs memory at the default config: 10.12 GB peak against 8.90 GB.
Products only (what the final network uses, below) saves some of it on the
search step but costs more time there: 9.33-9.48 GB against 10.09-10.11
GB, 67.3-68.1 s per step against 58.8-59.0 s and 183-185 s to compile
against 138-153 s (default config, second order, alternating pairs;
BENCHMARKS.md, session 26).
The test suite's float32 parity checks against PyTorch and its float64
checks pass with it (``tests/test_xla_env.py`` compares a float32 value and
gradient with and without it). It only affects the CPU backend; jax 0.11.2
accepts it too.

The final-training network (``configure(program="final")``, what
``train_final.py`` and ``darts_jax.bench --net final`` use) hands YNNPACK
its matrix products only (``--xla_cpu_experimental_ynn_fusion_type=dot``):
there the elementwise fusions and reductions cost memory and no time. Its
default-config step (C=36, 20 cells, batch 96, auxiliary head; ``python -m
darts_jax.bench --net final --config default --steps 2`` with and without
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot``, alternating, on
this project's 2-core CPU; BENCHMARKS.md, session 25): 11.79 s per step,
73.2 s to trace and compile, 8.07 GB peak (XLA plan 7.06 GB) against 11.81
s, 89.9 s and 13.31 GB (12.34 GB) with all three; a second pair, in the
other order, 12.34 s, 87.2 s and 8.06 GB against 12.00 s, 72.0 s and 13.25
GB (the compile times are this machine's drift).

Set ``DARTS_JAX_XLA_DEFAULTS=0`` to leave ``XLA_FLAGS`` untouched; a flag the
user already set is never overridden.

``enable_compilation_cache``: the training scripts keep compiled steps in
JAX's persistent compilation cache, so a resumed or repeated run with the same
settings loads them instead of compiling again.

``restart_with_hugepages``: the scripts (``train_search.py``,
``train_final.py``, ``darts_jax.bench``) re-execute themselves once at start
with glibc's ``glibc.malloc.hugetlb=1`` tunable, so that malloc asks for
transparent huge pages (``madvise``) on the memory it maps. XLA:CPU allocates
a step's temporaries as one buffer per execution (8.8 GB for one
default-config gradient pass) and frees it afterwards, so every step maps
fresh memory: with 4 KiB pages that is 2.3 million page faults per pass and
a third of the step's CPU time in the kernel. With huge pages (measured on
this project's 2-core CPU, alternating fresh processes; BENCHMARKS.md,
session 10): one default-config gradient pass 0.7-3.0 s faster (13.2-17.0 s
against 16.2-18.6 s), the default second-order step 60.7 / 63.4 s against
66.4 / 67.1 s, the test-config steps unchanged.
glibc reads tunables only at process start, hence the re-execution. It does
nothing where the kernel's ``transparent_hugepage`` mode is ``never``, on
other systems, or with ``DARTS_JAX_HUGEPAGES=0``.

``release_freed_memory``: XLA's compiler frees most of what it allocates, but
glibc keeps freed heap memory for reuse, and the step's first execution then
maps its temporaries on top of it. The loops and the benchmark hand that
memory back (``malloc_trim``) between compiling a step and running it: at the
default search config, second order, peak RSS 12.4 -> 10.1 GB (BENCHMARKS.md,
session 11). A user who preloads tcmalloc or jemalloc (``LD_PRELOAD``) gets
that allocator's own release as well. Neither is preloaded by default: on
this project's CPU tcmalloc cut the test config's compile by about 13 % but
at the default config its resident memory grew to 17.5 GB by the third step,
and jemalloc's default-config steps ran about 20 % slower (BENCHMARKS.md,
session 19).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import MutableMapping

_COMMON_FLAGS = (
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE",
)
# Each network's defaults; they differ in what YNNPACK gets (see above).
PROGRAM_FLAGS = {
    "search": (*_COMMON_FLAGS, "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"),
    "final": (*_COMMON_FLAGS, "--xla_cpu_experimental_ynn_fusion_type=dot"),
}
CACHE_ENV = "DARTS_JAX_CACHE_DIR"
_CACHE_OFF = ("", "0", "off", "none")


def configure(environ: MutableMapping[str, str] = os.environ, program: str = "search") -> str:
    """Adds the defaults of ``program`` (``PROGRAM_FLAGS``: 'search' or 'final', the
    network the process trains) to ``XLA_FLAGS`` unless opted out or already set;
    returns it.

    Call before the first JAX computation: XLA reads the variable when the
    backend starts, not when jax is imported.
    """
    if program not in PROGRAM_FLAGS:
        raise ValueError(f"unknown program {program!r}; choose one of {sorted(PROGRAM_FLAGS)}")
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("DARTS_JAX_XLA_DEFAULTS", "1") == "0":
        return flags
    for flag in PROGRAM_FLAGS[program]:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
    return flags


def default_cache_dir(environ: MutableMapping[str, str] = os.environ) -> str:
    """``$XDG_CACHE_HOME/darts_jax/xla``, by default ``~/.cache/darts_jax/xla``."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "darts_jax", "xla")


def enable_compilation_cache(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its folder, or None if off.

    The default-config second-order search step takes over two minutes to
    compile on a CPU; with the cache a resumed run skips that. Folder:
    ``$DARTS_JAX_CACHE_DIR`` (``off`` disables the cache), else JAX's own
    ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``~/.cache/darts_jax/xla``.
    It grows by one entry per distinct step program; delete the folder to
    reclaim the space.
    """
    import jax

    path = environ.get(CACHE_ENV)
    if path is None:
        path = environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir(environ)
    if path.strip().lower() in _CACHE_OFF:
        return None
    path = os.path.expanduser(path)
    # JAX caches only programs that took over a second to compile (its
    # jax_persistent_cache_min_compile_time_secs): the steps, not small helpers.
    jax.config.update("jax_compilation_cache_dir", path)
    return path


HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
HUGEPAGES_ENV = "DARTS_JAX_HUGEPAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepage_env(
    environ: MutableMapping[str, str] = os.environ, platform: str = sys.platform
) -> dict[str, str] | None:
    """The environment with ``HUGEPAGE_TUNABLE`` added to ``GLIBC_TUNABLES``, or
    None where there is nothing to do: already set, opted out
    (``DARTS_JAX_HUGEPAGES=0``), not Linux, or transparent huge pages off."""
    if platform != "linux" or environ.get(HUGEPAGES_ENV, "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:  # ours, or the user's own choice
        return None
    try:
        with open(_THP_MODE) as f:
            if "[never]" in f.read():
                return None
    except OSError:  # no transparent huge pages in this kernel
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE
    return env


def restart_with_hugepages() -> None:
    """Re-executes this Python process with the same arguments and ``hugepage_env``;
    returns at once if that is None. Call first thing in a script's ``__main__``
    block (glibc reads tunables at process start; the restarted process sees
    the variable and goes on)."""
    env = hugepage_env()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def release_freed_memory() -> bool:
    """Returns the heap memory that the allocator keeps after ``free`` to the system,
    e.g. the compiler's, before a step maps its own buffers: glibc's
    ``malloc_trim(0)``, and a preloaded tcmalloc's ``MallocExtension_ReleaseFreeMemory``
    or jemalloc's purge of all arenas where the process has one. False where none
    of them is found."""
    released = False
    try:
        process = ctypes.CDLL(None)
    except OSError:
        process = None
    if hasattr(process, "MallocExtension_ReleaseFreeMemory"):  # tcmalloc
        process.MallocExtension_ReleaseFreeMemory()
        released = True
    if hasattr(process, "mallctl"):  # jemalloc
        process.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
        released = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return released
    trim(0)  # glibc's own heap, also where another allocator serves malloc
    return True
