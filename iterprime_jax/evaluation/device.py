"""Device side of an evaluation: a `Mesh` over the local devices (image axis ``"data"``
sharded, parameters replicated; `iterprime_jax.placement`) and the jitted steps: the image
encoder and `eval_step` (IteRPrimE on a batch of images with their sentences, `StepInputs`,
then I and U against the referred masks by `iterprime_jax.metrics.intersection_union`, the
host metrics' own definition; `StepOutput`).

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
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from ..buckets import round_up
from ..config import IteRPrimEConfig
from ..memory import MemoryCheck
from ..method.pipeline import (
    CoreInputs,
    ProposalArrays,
    TextArrays,
    encode_image_jit,
    jit_method,
    segment_core,
)
from ..method.refine import FloatSettings
from ..metrics import intersection_union
from ..models.blip.config import BlipConfig
from ..models.loading import Model, matmul_precision
from ..placement import data_mesh, data_shardings
from ..types import Params
from .config import EvalError

T = TypeVar("T")


class GroundTruth(NamedTuple):
    """One image's referred masks: masks (R, canvas, canvas) bool, one per ref (padded: R is
    the sentence bucket in the evaluator); sentence_ref (Sb,) int32, the ref of each
    sentence."""

    masks: jax.Array
    sentence_ref: jax.Array


class StepInputs(NamedTuple):
    """The arrays of `eval_step`, every leaf with a leading image axis B: image_embeds
    (B, S, D); text (`TextArrays`, (B, Sb, T)); image_hw (B, 2) int32; proposals
    (`ProposalArrays`, (B, P, canvas, canvas), P = 0 for heat-map rows); gt (`GroundTruth`)."""

    image_embeds: jax.Array
    text: TextArrays
    image_hw: jax.Array
    proposals: ProposalArrays
    gt: GroundTruth


class StepOutput(NamedTuple):
    """Per image and sentence (B, Sb): intersection and union (int32 pixel counts on the
    canvas), iterations (accepted IGRS passes), proposal (chosen index, -1 none),
    has_candidate (bool)."""

    intersection: jax.Array
    union: jax.Array
    iterations: jax.Array
    proposal: jax.Array
    has_candidate: jax.Array


def _one_image(params: Params, model_config: BlipConfig, method: IteRPrimEConfig,
               canvas: int, floats: FloatSettings, x: StepInputs) -> StepOutput:
    """One image, Sb sentences (`x` without the image axis): the `StepOutput` of each
    sentence, its I and U against the referred object's mask (`metrics.intersection_union`)."""
    core = CoreInputs(x.image_embeds[None], x.text, x.image_hw, x.proposals)
    out = segment_core(params, model_config, method, canvas, core, floats)
    g = x.gt.masks[x.gt.sentence_ref]  # (Sb, canvas, canvas): the referred mask per sentence
    inter, union = intersection_union(out.mask, g, xp=jnp)
    return StepOutput(inter, union, out.igrs.iterations.astype(jnp.int32),
                      out.index.astype(jnp.int32), out.has_candidate)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def eval_step(params: Params, model_config: BlipConfig, method: IteRPrimEConfig, canvas: int,
              floats: FloatSettings, inputs: StepInputs) -> StepOutput:
    """`_one_image` vmapped over a batch of images (`inputs`: every leaf has a leading image
    axis; `floats` are shared). Pass `method` through `static_config` so float sweeps share
    the compilation (`Device.step` does)."""
    one = functools.partial(_one_image, params, model_config, method, canvas)
    return jax.vmap(one, in_axes=(None, 0))(floats, inputs)


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

    def step(self, method: IteRPrimEConfig, canvas: int, inputs: StepInputs) -> StepOutput:
        """`eval_step` on inputs already on the mesh (`put`); the float settings of `method`
        are sent (explicitly, replicated) as traced scalars."""
        static, floats = jit_method(method)
        floats = jax.device_put(floats, self.repl)
        b, sentences, length = inputs.text.input_ids.shape[:3]
        proposals = inputs.proposals.masks.shape[1]
        call = (f"a step of {b} images (canvas {canvas}, {sentences} sentences and "
                f"{proposals} proposals per image, text length {length})")
        shapes = tuple((a.shape, a.dtype) for a in jax.tree_util.tree_leaves(inputs))
        key = (static, canvas, shapes, self.precision)
        with matmul_precision(self.precision):
            return self.memory.run(
                eval_step, key, (self.params, self.model_config, static, canvas, floats, inputs),
                call, self.error(b))

    def error(self, batch: int) -> Any:
        """``error(call, detail)`` -> `batch_error` for a batch of `batch` images here."""
        return functools.partial(batch_error, batch, self.count)

    def put(self, tree: T) -> T:
        """Host arrays (any pytree of them) -> device arrays sharded over the image axis."""
        return jax.device_put(tree, self.data)
