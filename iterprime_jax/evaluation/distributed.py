"""Several processes (`jax.distributed`): start-up, barriers, and each process's share of the
images (``position % process_count == process_index``)."""

from __future__ import annotations

import jax

from .index import ImageMeta


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize` (arguments left to cluster auto-detection when None)."""
    kw = {k: v for k, v in (("coordinator_address", coordinator),
                            ("num_processes", num_processes), ("process_id", process_id))
          if v is not None}
    jax.distributed.initialize(**kw)


def barrier(name: str) -> None:
    """Waits for every process (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_share(images: list[ImageMeta]) -> list[ImageMeta]:
    """The images this process evaluates."""
    pc, pi = jax.process_count(), jax.process_index()
    return [m for m in images if m.position % pc == pi]
