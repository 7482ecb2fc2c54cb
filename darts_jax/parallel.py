"""Data parallelism: a one-axis device mesh, and moving host data onto it.

The global batch is split over the mesh's 'data' axis; weights, alphas,
optimizer states and RNG are replicated. Steps are jitted with these
shardings and stay the same global program, so batch-norm statistics are
over the global batch and results do not depend on the device count (up to
float rounding in the cross-device sums). Works unchanged over several
processes (hosts) after ``jax.distributed.initialize()``: every process runs
the same program, builds the same host arrays (same seeds), and each puts
only the shards of its own devices.
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from darts_jax.config import UsageError

AXIS = "data"


class DeviceError(UsageError):
    """--gpus names devices that are not there, or the batch does not divide over them."""


class Parallel(NamedTuple):
    """The mesh and the two shardings every step uses."""

    mesh: Mesh

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def data(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(AXIS))

    @property
    def size(self) -> int:
        return self.mesh.devices.size


def parse_gpus(gpus: str) -> list[int] | None:
    """pt.darts's --gpus: '0', '0,1,2,3' or 'all' (None). Raises ValueError otherwise."""
    if gpus == "all":
        return None
    if not re.fullmatch(r"\d+(,\d+)*", gpus):
        raise ValueError(f"--gpus must be 'all' or a comma list like '0,1', got {gpus!r}")
    ids = [int(i) for i in gpus.split(",")]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--gpus lists a device twice: {gpus!r}")
    return ids


def select_devices(gpus: str) -> list:
    """The devices --gpus names: indices into each process's local devices (GPUs,
    TPUs, or CPU devices where there are none); over several processes, the same
    local indices on every process."""
    ids = parse_gpus(gpus)
    local = jax.local_devices()
    if ids is not None:
        missing = [i for i in ids if i >= len(local)]
        if missing:
            names = ", ".join(str(d) for d in local)
            raise DeviceError(
                f"--gpus {gpus}: no device {missing[0]} here; this process has {len(local)}: "
                f"{names}"
            )
    if jax.process_count() == 1:
        return local if ids is None else [local[i] for i in ids]
    chosen = []
    for p in range(jax.process_count()):
        devices = [d for d in jax.devices() if d.process_index == p]
        chosen += devices if ids is None else [devices[i] for i in ids]
    return chosen


def setup(gpus: str, batch_size: int) -> Parallel:
    """The mesh over the devices --gpus selects; the batch must divide over them."""
    devices = select_devices(gpus)
    if batch_size % len(devices):
        raise DeviceError(
            f"--batch_size {batch_size} does not divide over the {len(devices)} devices of "
            f"--gpus {gpus}: use a multiple of {len(devices)}"
        )
    return Parallel(Mesh(np.array(devices), (AXIS,)))


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Host (or single-device) arrays, the same on every process, onto the mesh; each
    process transfers only the shards of its own devices."""

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(one, tree)


def process_slice(batch_indices: np.ndarray, par: Parallel) -> np.ndarray:
    """This process's columns of (steps, global batch) indices: the rows of the
    batch its devices hold (devices are ordered by process in the mesh)."""
    share = batch_indices.shape[-1] * len(par.mesh.local_devices) // par.size
    start = jax.process_index() * share
    return batch_indices[..., start : start + share]


def put_local(tree: Any, sharding: NamedSharding) -> Any:
    """This process's part of a batch (``process_slice``) onto the mesh as the
    global batch."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def to_host(tree: Any) -> Any:
    """Replicated (or fully addressable) arrays as numpy, on any process."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def is_main_process() -> bool:
    """Only process 0 writes logs, plots and tensorboard."""
    return jax.process_index() == 0


def initialize_distributed() -> None:
    """``jax.distributed.initialize()`` for multi-host runs: cluster settings are
    detected (SLURM, TPU pods, Open MPI), or read from JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. CPU devices talk through gloo. Missing
    or malformed settings are a ``UsageError`` saying what to set."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    env = os.environ
    kwargs = {}
    try:
        if "JAX_COORDINATOR_ADDRESS" in env:
            kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # no cluster detected, or a setting that is not a number
        raise UsageError(
            f"--distributed: {e} (no SLURM, TPU pod or Open MPI job was detected, or its "
            "settings are incomplete; set JAX_COORDINATOR_ADDRESS=host:port, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        ) from e
