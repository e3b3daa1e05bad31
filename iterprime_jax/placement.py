"""Where arrays live: the one place that builds meshes and shardings.

`iterprime_jax.load` puts a model's parameters on the devices once (`place_params`); the
public functions then send only their inputs, explicitly (`input_sharding`: replicated over
the devices the parameters live on), and the evaluator and the proposer shard the image axis
over a 1-D mesh (`data_mesh`, axis ``"data"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, Sharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from .types import Params

DATA_AXIS = "data"


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh (axis ``"data"``) over `devices` (default: this process's local devices)."""
    devs = list(jax.local_devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices: an empty list; give at least one device")
    known = set(jax.devices())
    bad = [d for d in devs if d not in known]
    if bad:
        raise ValueError(f"devices: {bad[0]} is not one of this runtime's devices "
                         f"{jax.devices()}")
    if len(set(devs)) != len(devs):
        raise ValueError(f"devices: {devs} lists a device twice")
    return Mesh(np.asarray(devs), (DATA_AXIS,))


def data_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(leading axis sharded over ``"data"``, replicated) on `mesh`."""
    return NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())


def _as_sharding(where: Mesh | Sharding | Any | None) -> Sharding:
    """The parameters' sharding for `place_params`' `where`, checked against the devices."""
    if where is None:
        return SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(where, Mesh):
        sharding: Sharding = NamedSharding(where, P())
    elif isinstance(where, Sharding):
        sharding = where
    elif isinstance(where, jax.Device):
        sharding = SingleDeviceSharding(where)
    else:
        raise ValueError(f"sharding: expected a jax Mesh, Sharding or Device, got "
                         f"{type(where).__name__}")
    known = set(jax.devices())
    outside = [d for d in sharding.device_set if d not in known]
    if outside:
        raise ValueError(f"sharding: device {outside[0]} is not one of this runtime's devices "
                         f"{jax.devices()}")
    if not sharding.is_fully_replicated:
        raise ValueError(f"sharding: {sharding} splits arrays; parameters must be replicated "
                         "(use a Mesh or a NamedSharding with PartitionSpec())")
    return sharding


def place_params(params: Params, where: Mesh | Sharding | Any | None = None) -> Params:
    """Parameters on the devices, once: replicated on `where` (a Mesh, a replicated Sharding
    or a Device; default: the first local device)."""
    return jax.device_put(params, _as_sharding(where))


def params_sharding(params: Params) -> Sharding:
    """The sharding the parameters live on (of their first leaf), or the first local device
    for host (numpy) parameters."""
    leaves = jax.tree_util.tree_leaves(params)
    if leaves and isinstance(leaves[0], jax.Array):
        return leaves[0].sharding
    return SingleDeviceSharding(jax.local_devices()[0])


def input_sharding(params: Params) -> Sharding:
    """Where a public function puts its inputs: replicated over the parameters' devices."""
    s = params_sharding(params)
    if isinstance(s, NamedSharding):
        return NamedSharding(s.mesh, P())
    if len(s.device_set) == 1:
        return SingleDeviceSharding(next(iter(s.device_set)))
    return s


def put_inputs(params: Params, *arrays: Any) -> list[jax.Array]:
    """`jax.device_put` of host inputs next to the parameters (the one explicit transfer of a
    call)."""
    s = input_sharding(params)
    return [jax.device_put(a, s) for a in arrays]
