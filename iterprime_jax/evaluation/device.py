"""Device side of an evaluation: a `Mesh` over the local devices (image axis ``"data"``
sharded, parameters replicated) and the jitted steps: the image encoder and `eval_step`
(IteRPrimE on a batch of images with their sentences, then I and U against the referred masks).

The steps are module-level `jax.jit` functions with the configs and the canvas as static
arguments, so JAX's own compilation cache serves repeated runs and ablation rows; the
shardings follow the committed inputs (`Device.put`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..config import IteRPrimEConfig
from ..method.pipeline import encode_image_jit, segment_core
from ..models.blip.config import BlipConfig
from ..models.loading import Model
from ..types import Params


def _one_image(params: Params, bconfig: BlipConfig, method: IteRPrimEConfig, canvas: int,
               embeds: jax.Array, ids: jax.Array, attn: jax.Array, focus: jax.Array,
               primary: jax.Array, hw: jax.Array, props: jax.Array, valid: jax.Array,
               ncomp: jax.Array, gt: jax.Array, sref: jax.Array) -> tuple[jax.Array, ...]:
    """One image, Sb sentences: (I, U, accepted IGRS passes, proposal index, has candidate),
    each (Sb,). gt (R, canvas, canvas) holds the image's referred masks, sref (Sb,) the ref of
    each sentence."""
    out = segment_core(params, bconfig, method, canvas, embeds[None], ids, attn, focus,
                       primary, hw, props, valid, ncomp)
    g = gt[sref]  # (Sb, canvas, canvas): the referred object's mask per sentence
    inter = jnp.sum(out.mask & g, axis=(1, 2), dtype=jnp.int32)
    union = jnp.sum(out.mask | g, axis=(1, 2), dtype=jnp.int32)
    return (inter, union, out.igrs.iterations.astype(jnp.int32), out.index.astype(jnp.int32),
            out.has_candidate)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def eval_step(params: Params, bconfig: BlipConfig, method: IteRPrimEConfig, canvas: int,
              *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """`_one_image` vmapped over a batch of images (every array has a leading image axis)."""
    return jax.vmap(_one_image, in_axes=(None, None, None, None) + (0,) * len(arrays))(
        params, bconfig, method, canvas, *arrays)


class Device:
    """The local devices of this process as a 1-D mesh; replicated params."""

    def __init__(self, model: Model):
        self.devices = jax.local_devices()
        self.mesh = Mesh(np.asarray(self.devices), ("data",))
        self.data = NamedSharding(self.mesh, P("data"))
        self.repl = NamedSharding(self.mesh, P())
        self.bconfig = model.config
        self.params = jax.device_put(model.params, self.repl)

    @property
    def count(self) -> int:
        return len(self.devices)

    def encode(self, pixels: jax.Array) -> jax.Array:
        """Image embeddings of a batch of pixels already on the mesh (`put`)."""
        return encode_image_jit(self.params, self.bconfig, pixels)

    def step(self, method: IteRPrimEConfig, canvas: int, *arrays: jax.Array
             ) -> tuple[jax.Array, ...]:
        """`eval_step` on arrays already on the mesh."""
        return eval_step(self.params, self.bconfig, method, canvas, *arrays)

    def put(self, arrays: Sequence[np.ndarray]) -> list[jax.Array]:
        """Host arrays -> device arrays sharded over the image axis."""
        return [jax.device_put(a, self.data) for a in arrays]
