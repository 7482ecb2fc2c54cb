"""XLA flags darts_jax adds before JAX creates its backend, and why.

``--xla_gpu_enable_triton_gemm=false``: on an H200 with jax 0.11.2 the XLA GPU
compiler aborted on the search step (test config, first order) with
``triton_tiling_propagation.cc: Check failed: subdim_size_accumulator ==
dim_size (64 vs. 16)``, a known XLA bug in Triton GEMM fusion for small CNN
shapes (openxla/xla#47381, jax-ml/jax#34010) whose suggested workaround is to
keep such fusions off Triton (cuBLAS instead). The flag also spares the
autotuning of Triton GEMM configurations. It only affects GPU backends.

Set ``DARTS_JAX_XLA_DEFAULTS=0`` to leave ``XLA_FLAGS`` untouched; a flag the
user already set is never overridden.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULT_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def configure(environ: MutableMapping[str, str] = os.environ) -> str:
    """Adds DEFAULT_FLAGS to ``XLA_FLAGS`` (unless opted out or already set); returns it.

    Call before the first JAX computation: XLA reads the variable when the
    backend starts, not when jax is imported.
    """
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("DARTS_JAX_XLA_DEFAULTS", "1") == "0":
        return flags
    for flag in DEFAULT_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    environ["XLA_FLAGS"] = flags
    return flags
