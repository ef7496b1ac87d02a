"""Device mesh, multi-host start-up, and host batch -> global array.

ncjax trains with one `jax.jit` step over a 1-D ('data',) mesh instead of `jax.pmap`: parameters
and optimiser state are replicated, the batch is sharded on its first axis, and reductions over
the batch (the MLM loss, the NC3 class sums) become all-reduces that the compiler inserts. The same
code runs on one CPU, on 8 simulated CPU devices, on a GPU and on a TPU pod; on a pod (or any
multi-process run) `initialize_distributed` is the only addition.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

AXIS = "data"


def initialize_distributed(
    mode: str = "auto",
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
) -> bool:
    """Starts JAX's multi-process runtime when asked; returns whether it did.

    mode: 'off' never starts it; 'on' always does (arguments empty / 0 / -1 are auto-detected by
    JAX, as on a TPU pod or under SLURM / Open MPI); 'auto' starts it when a coordinator address
    is given (argument or JAX_COORDINATOR_ADDRESS) or the environment shows several processes
    (SLURM_NTASKS or OMPI_COMM_WORLD_SIZE > 1, a multi-host GKE TPU slice).
    Must run before any other JAX call touches a device."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"parallel.distributed {mode!r} is not 'auto', 'on' or 'off'.")
    if mode == "off":
        return False
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    cluster = _multi_process_environment()
    if mode == "auto" and not address and not cluster:
        return False
    kwargs: dict[str, Any] = {}
    if address:
        kwargs["coordinator_address"] = address
    if num_processes > 0:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    log.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    jax.distributed.initialize(**kwargs)
    return True


def _multi_process_environment() -> bool:
    """True under a launcher that started several processes (SLURM, Open MPI, a GKE TPU slice)."""

    def count(name: str) -> int:
        try:
            return int(os.environ.get(name, "1"))
        except ValueError:
            return 1

    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return (count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in hosts
            or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ)


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ('data',) mesh over all devices (num_devices 0) or the first `num_devices`.

    A subset is allowed only in a single-process run (tests compare 1 and 8 devices that way)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices) or num_devices < 0:
            raise ValueError(f"parallel.num_devices {num_devices} is not in [1, {len(devices)}] "
                             "(the devices this run sees); use 0 for all of them.")
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("parallel.num_devices must be 0 (all devices) in a multi-process run.")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, penalty statistics)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over the 'data' axis (the batch)."""
    return NamedSharding(mesh, P(AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> None:
    """Raises ValueError (naming the option `key`) unless the global batch splits evenly over
    devices and processes."""
    n = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n:
        raise ValueError(f"{key} {global_batch_size} is not divisible by the {n} devices of the "
                         f"mesh; use a multiple of {n} (or fewer devices).")
    if global_batch_size % jax.process_count():
        raise ValueError(f"{key} {global_batch_size} is not divisible by the "
                         f"{jax.process_count()} processes; use a multiple of it.")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded on axis 0.

    local: {name: [local_batch, ...]}; every process passes its own contiguous slice of the
    global batch in process order (what `data.Sampler` yields). Returns {name: [global_batch, ...]}."""
    sharding = batch_sharded(mesh)
    out = {}
    for k, v in local.items():
        global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


def to_host(tree: Any) -> Any:
    """Fetches a tree of replicated (or fully addressable) arrays to numpy on every process."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # Replicated: any local shard holds the whole value.
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
