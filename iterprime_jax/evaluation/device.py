"""Device side of an evaluation: a `Mesh` over the local devices (image axis ``"data"``
sharded, parameters replicated; `iterprime_jax.placement`) and the jitted steps: the image
encoder and `eval_step` (IteRPrimE on a batch of images with their sentences, then I and U
against the referred masks).

The steps are module-level `jax.jit` functions with the structural configs and the canvas as
static arguments and the float settings traced (`FloatSettings`), so JAX's own compilation
cache serves repeated runs, ablation rows and float sweeps; the shardings follow the committed
inputs (`Device.put`).

A step too large for the devices' memory is an `EvalError` naming ``batch_size`` (`batch_error`):
checked before its first run where the backend reports its memory (`memory.MemoryCheck`), and
XLA's out-of-memory error re-raised so (chained) otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..buckets import round_up
from ..config import IteRPrimEConfig
from ..memory import MemoryCheck
from ..method.pipeline import encode_image_jit, jit_method, segment_core
from ..method.refine import FloatSettings
from ..models.blip.config import BlipConfig
from ..models.loading import Model, matmul_precision
from ..placement import data_mesh, data_shardings
from ..types import Params
from .config import EvalError


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


def batch_error(batch: int, devices: int, call: str, detail: str) -> EvalError:
    """The error of a batch too large for the device memory: names ``batch_size`` and its
    value, what did not fit (`call`: the batch's shapes) and why (`detail`), and a smaller
    value (a multiple of the device count) or, at one image per device, the other knobs."""
    if batch > devices:
        fix = (f"pass a smaller batch_size (--batch-size), e.g. "
               f"{round_up(max(devices, batch // 2), devices)}")
    else:
        fix = ("batch_size is already one image per device: use a smaller canvas (--canvas), "
               "fewer proposals or devices with more memory")
    return EvalError(f"batch_size {batch} (--batch-size) is too large for the device memory: "
                     f"{call} does not fit ({detail}); {fix}")


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
        self.memory = MemoryCheck(self.devices)  # the devices' memory, when reported

    @property
    def count(self) -> int:
        return len(self.devices)

    def encode(self, pixels: jax.Array) -> jax.Array:
        """Image embeddings of a batch of pixels already on the mesh (`put`)."""
        b, h, w = pixels.shape[:3]
        call = f"the image encoder on {b} images of {h}x{w} px"
        with matmul_precision(self.precision):
            return self.memory.run(
                encode_image_jit, ("encode", pixels.shape, pixels.dtype, self.precision),
                (self.params, self.model_config, pixels), call, self.error(b))

    def step(self, method: IteRPrimEConfig, canvas: int, *arrays: jax.Array
             ) -> tuple[jax.Array, ...]:
        """`eval_step` on arrays already on the mesh (`run_batches`' order: image embeds,
        ids (B, Sb, T), attention, focus, primary, hw, proposals (B, P, canvas, canvas),
        ...); the float settings of `method` are sent (explicitly, replicated) as traced
        scalars."""
        static, floats = jit_method(method)
        floats = jax.device_put(floats, self.repl)
        b, sentences, length = arrays[1].shape[:3]
        proposals = arrays[6].shape[1] if len(arrays) > 6 else 0
        call = (f"a step of {b} images (canvas {canvas}, {sentences} sentences and "
                f"{proposals} proposals per image, text length {length})")
        key = (static, canvas, tuple((a.shape, a.dtype) for a in arrays), self.precision)
        with matmul_precision(self.precision):
            return self.memory.run(
                eval_step, key, (self.params, self.model_config, static, canvas, floats, *arrays),
                call, self.error(b))

    def error(self, batch: int) -> Any:
        """``error(call, detail)`` -> `batch_error` for a batch of `batch` images here."""
        return functools.partial(batch_error, batch, self.count)

    def put(self, arrays: Sequence[np.ndarray]) -> list[jax.Array]:
        """Host arrays -> device arrays sharded over the image axis."""
        return [jax.device_put(a, self.data) for a in arrays]
