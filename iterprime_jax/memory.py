"""Device memory: recognising XLA's out-of-memory errors, how much a device holds and how much
a compiled step needs, so that a batch too large for the devices gets a clear error naming
the setting that sets its size (the evaluator's ``batch_size``, the proposer's
``max_batch``) instead of XLA's ``RESOURCE_EXHAUSTED``.

Two checks: `MemoryCheck` compares, once per compiled shape and before running it, what the
compiled step needs (its `memory_analysis`: arguments + outputs + temporaries) with what the
devices hold (``memory_stats()["bytes_limit"]``, reported by GPU and TPU backends; on a CPU
nothing is reported and the check is skipped); `is_out_of_memory` recognises the error XLA
raises when an allocation fails anyway (at compile or run time), which the callers re-raise
with the setting named, chained (``from``) to XLA's message.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax

OOM_MARKERS = ("resource_exhausted", "out of memory")


class DeviceMemoryError(ValueError):
    """A call too large for the devices' memory. `call` describes the call (its shapes),
    `detail` what was found (needed / available bytes, or XLA's first line), `device` the
    devices; the message names the setting to lower."""

    def __init__(self, message: str, call: str, detail: str, device: str):
        super().__init__(message)
        self.call, self.detail, self.device = call, detail, device


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is XLA's failed allocation (a `jax.errors.JaxRuntimeError` whose message
    says RESOURCE_EXHAUSTED or out of memory)."""
    text = str(err).lower()
    return (isinstance(err, jax.errors.JaxRuntimeError)
            and any(m in text for m in OOM_MARKERS))


def first_line(err: BaseException) -> str:
    """The first line of an error's message (XLA's are long)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def memory_stats(device: Any) -> dict[str, Any] | None:
    """The backend's memory report of `device` (None when it reports nothing, as on CPU)."""
    try:
        return device.memory_stats()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None


def bytes_limit(devices: Sequence[Any]) -> int | None:
    """The smallest ``bytes_limit`` the `devices` report, or None when one reports none."""
    limits = []
    for d in devices:
        stats = memory_stats(d)
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def compiled_bytes(compiled: Any) -> int | None:
    """Bytes per device a compiled step needs while it runs: arguments + outputs +
    temporaries - buffers aliased between arguments and outputs (None when the backend gives
    no `memory_analysis`)."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def human_bytes(n: int) -> str:
    """``1.50 GiB``, ``12.0 MiB``, ``1.0 KiB``, ``100 B``."""
    for unit, size, fmt in (("GiB", 2**30, ".2f"), ("MiB", 2**20, ".1f"), ("KiB", 2**10, ".1f")):
        if n >= size:
            return f"{n / size:{fmt}} {unit}"
    return f"{n} B"


def describe_devices(devices: Sequence[Any]) -> str:
    """``"4 x TPU v4"``: how many devices, of which kind."""
    return f"{len(devices)} x {devices[0].device_kind}" if devices else "no device"


class MemoryCheck:
    """What a jitted call needs against what the devices hold, checked once per compiled
    shape (the key) before the first run; nothing to do where the backend reports no limit
    (CPU). The step is compiled here (``lower(...).compile()``); the call that follows reuses
    that compilation from JAX's cache."""

    def __init__(self, devices: Sequence[Any]):
        self.devices = list(devices)
        self.limit = bytes_limit(self.devices)
        self.device = describe_devices(self.devices)
        self._checked: set[Hashable] = set()

    def too_large(self, fn: Any, key: Hashable, *args: Any) -> tuple[int, int] | None:
        """(needed, available) bytes per device when the call ``fn(*args)`` (a `jax.jit`
        function; static arguments included) does not fit, else None. Call it under the
        matmul precision the call runs at (it is part of the compilation)."""
        if self.limit is None or key in self._checked:
            return None
        need = compiled_bytes(fn.lower(*args).compile())
        self._checked.add(key)
        if need is not None and need > self.limit:
            return need, self.limit
        return None

    def run(self, fn: Any, key: Hashable, args: tuple[Any, ...], call: str,
            error: Callable[[str, str], Exception]) -> Any:
        """``fn(*args)`` with both checks: `too_large` first, then XLA's own out-of-memory
        error; either becomes ``error(call, detail)`` (raised from XLA's error when there is
        one). Other errors pass through unchanged."""
        found = self.too_large(fn, key, *args)
        if found is not None:
            raise error(call, f"it needs {human_bytes(found[0])} per device, the {self.device} "
                              f"device(s) hold {human_bytes(found[1])}")
        try:
            return fn(*args)
        except jax.errors.JaxRuntimeError as e:
            if is_out_of_memory(e):
                raise error(call, f"out of memory on the {self.device} device(s): "
                                  f"{first_line(e)}") from e
            raise
