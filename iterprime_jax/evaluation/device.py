"""Device side of an evaluation: a `Mesh` over the local devices (image axis ``"data"``
sharded, parameters replicated; `iterprime_jax.placement`) and the jitted steps: the image
encoder and `eval_step` (IteRPrimE on a batch of images with their sentences, then I and U
against the referred masks).

The steps are module-level `jax.jit` functions with the structural configs and the canvas as
static arguments and the float settings traced (`FloatSettings`), so JAX's own compilation
cache serves repeated runs, ablation rows and float sweeps; the shardings follow the committed
inputs (`Device.put`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..config import IteRPrimEConfig
from ..method.pipeline import encode_image_jit, jit_method, segment_core
from ..method.refine import FloatSettings
from ..models.blip.config import BlipConfig
from ..models.loading import Model, matmul_precision
from ..placement import data_mesh, data_shardings
from ..types import Params


def _one_image(params: Params, model_config: BlipConfig, method: IteRPrimEConfig,
               canvas: int, floats: FloatSettings, embeds: jax.Array, ids: jax.Array,
               attn: jax.Array, focus: jax.Array, primary: jax.Array, hw: jax.Array,
               props: jax.Array, valid: jax.Array, num_components: jax.Array, gt: jax.Array,
               sentence_ref: jax.Array) -> tuple[jax.Array, ...]:
    """One image, Sb sentences: (I, U, accepted IGRS passes, proposal index, has candidate),
    each (Sb,). gt (R, canvas, canvas) holds the image's referred masks, sentence_ref (Sb,)
    the ref of each sentence."""
    out = segment_core(params, model_config, method, canvas, embeds[None], ids, attn, focus,
                       primary, hw, props, valid, num_components, floats)
    g = gt[sentence_ref]  # (Sb, canvas, canvas): the referred object's mask per sentence
    inter = jnp.sum(out.mask & g, axis=(1, 2), dtype=jnp.int32)
    union = jnp.sum(out.mask | g, axis=(1, 2), dtype=jnp.int32)
    return (inter, union, out.igrs.iterations.astype(jnp.int32), out.index.astype(jnp.int32),
            out.has_candidate)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def eval_step(params: Params, model_config: BlipConfig, method: IteRPrimEConfig, canvas: int,
              floats: FloatSettings, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """`_one_image` vmapped over a batch of images (every array has a leading image axis;
    `floats` are shared). Pass `method` through `static_config` so float sweeps share the
    compilation (`Device.step` does)."""
    return jax.vmap(_one_image, in_axes=(None,) * 5 + (0,) * len(arrays))(
        params, model_config, method, canvas, floats, *arrays)


class Device:
    """The local devices of this process as a 1-D mesh; replicated params (no copy when
    `iterprime_jax.load` already placed them there)."""

    def __init__(self, model: Model):
        self.devices = jax.local_devices()
        self.mesh = data_mesh(self.devices)
        self.data, self.repl = data_shardings(self.mesh)
        self.model_config = model.config
        self.precision = getattr(model, "precision", "highest")  # matmul precision
        self.params = jax.device_put(model.params, self.repl)

    @property
    def count(self) -> int:
        return len(self.devices)

    def encode(self, pixels: jax.Array) -> jax.Array:
        """Image embeddings of a batch of pixels already on the mesh (`put`)."""
        with matmul_precision(self.precision):
            return encode_image_jit(self.params, self.model_config, pixels)

    def step(self, method: IteRPrimEConfig, canvas: int, *arrays: jax.Array
             ) -> tuple[jax.Array, ...]:
        """`eval_step` on arrays already on the mesh; the float settings of `method` are
        sent (explicitly, replicated) as traced scalars."""
        static, floats = jit_method(method)
        floats = jax.device_put(floats, self.repl)
        with matmul_precision(self.precision):
            return eval_step(self.params, self.model_config, static, canvas, floats, *arrays)

    def put(self, arrays: Sequence[np.ndarray]) -> list[jax.Array]:
        """Host arrays -> device arrays sharded over the image axis."""
        return [jax.device_put(a, self.data) for a in arrays]
