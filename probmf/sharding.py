"""Several devices through JAX's own sharding: a 1-D mesh over the first N devices.

Fitters take ``devices: int = 1``. With N > 1 they build `device_mesh(N)` and split their
work along its one axis, ``AXIS``:
- row solvers (ALS, Gibbs) give each device a contiguous range of user (then item) rows;
  each device solves its rows against the other side's full factor table, and the new
  rows are all-gathered between half-sweeps (`probmf.fitters.rows`);
- minibatch trainers (optax, SVI, AutoRec, MLP) split every batch across devices (data
  parallel); the gradient's sum over the batch becomes an all-reduce.
The same code runs on CPU, GPU and TPU. On a CPU-only machine, N host devices come from
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before Python starts; on several
hosts, call ``jax.distributed.initialize()`` first and N counts the devices of all hosts;
a result whose rows are split across hosts is then read with `to_host`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def check_devices(devices: Any) -> int:
    """Validate the ``devices`` option (a positive integer) without touching any device."""
    if isinstance(devices, bool) or int(devices) != devices or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    return int(devices)


def device_mesh(devices: int) -> Mesh | None:
    """A 1-D `Mesh` over the first ``devices`` devices, or None for one device (no sharding)."""
    devices = check_devices(devices)
    if devices == 1:
        return None
    available = jax.devices()
    if len(available) < devices:
        hint = (
            f"; on CPU start Python with XLA_FLAGS=--xla_force_host_platform_device_count={devices}"
            if available[0].platform == "cpu"
            else ""
        )
        raise ValueError(f"devices={devices} but JAX sees {len(available)} {available[0].platform} device(s){hint}")
    return Mesh(np.asarray(available[:devices]), (AXIS,))


def replicated(mesh: Mesh | None, tree: Any) -> Any:
    """Place every leaf of ``tree`` on all devices of ``mesh`` (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P()))


def split_along(mesh: Mesh | None, tree: Any, axis: int) -> Any:
    """Split every leaf of ``tree`` along ``axis`` across the devices of ``mesh``; that axis's
    length must divide by the number of devices."""
    if mesh is None:
        return tree
    spec = P(*([None] * axis), AXIS)
    return jax.device_put(tree, NamedSharding(mesh, spec))


def to_host(tree: Any) -> Any:
    """``tree`` with every array that spans other processes' devices gathered into a numpy
    array holding all of it; every other leaf as it is.

    With one process (or a result kept on this process's devices) nothing moves. Under
    ``jax.distributed`` the gathers are collectives: every process must call this on the same
    tree, and each gets the whole result."""

    def gather(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x

    return jax.tree.map(gather, tree)
