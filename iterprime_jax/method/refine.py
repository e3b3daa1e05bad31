"""Iterative Grad-CAM Refinement (IGRS, docs/method.md section 3) as a jitted `while_loop`.

The loop is batch-native with static shapes: a sample whose match probability dropped is frozen
by masking (`active`), not by Python control flow, and the loop stops as soon as no sample of
the batch is active (or the configured passes are used), so a batch costs the passes it needs.
Under `jax.vmap` (the evaluator's image axis) JAX runs the body while any image still has an
active sentence and keeps the carry of the finished images unchanged (its batching rule selects
the old carry where an image's own predicate is false); the body leaves inactive samples
unchanged anyway.

The float settings (alpha, the stretch's sharpness and center, the mask threshold) may be
traced values (`FloatSettings`), so a sweep over them reuses one compilation.

Which map is returned (docs/method.md section 3): the running map H; `IGRSResult.first_pass` says
whether H is still pass 0's own map (no later pass blended in). The pipeline stretches exactly
those maps after upsampling (the authors stretch pass 0's upsampled map whatever follows) and
returns a blended map without stretch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..config import IteRPrimEConfig
from ..types import Array

# keep (B, gh*gw) int32, 1 = visible  ->  heat (B, gh, gw) in [0, 1], P(match) (B,)
StepFn = Callable[[Array], tuple[Array, Array]]


class IGRSResult(NamedTuple):
    """heat: (B, gh, gw) final running map; iterations: (B,) accepted passes (>= 1);
    scores: (B, n) P(match) per pass, NaN after the stop; heats: (B, n, gh, gw) per-pass maps
    (zeros after the stop); keep: (B, gh, gw) final keep-mask (1 = visible); first_pass: (B,)
    bool, True where `heat` is pass 0's map unblended (to be stretched after upsampling)."""

    heat: Array
    iterations: Array
    scores: Array
    heats: Array
    keep: Array
    first_pass: Array


class FloatSettings(NamedTuple):
    """The float settings of `IteRPrimEConfig` as (possibly traced) scalars: jitted functions
    take them as arguments, so changing them does not recompile. Python floats (`of`) give
    the same numbers as traced float32 scalars (`traced`)."""

    alpha: Array | float
    stretch_sharpness: Array | float
    stretch_center: Array | float
    mask_threshold: Array | float
    heat_threshold: Array | float

    @classmethod
    def of(cls, config: IteRPrimEConfig) -> FloatSettings:
        """The config's own values (Python floats)."""
        return cls(*(float(getattr(config, f)) for f in cls._fields))

    def traced(self) -> FloatSettings:
        """float32 host scalars (numpy), to be passed as jit arguments (`jax.device_put`)."""
        return FloatSettings(*(np.float32(v) for v in self))


def static_config(config: IteRPrimEConfig) -> IteRPrimEConfig:
    """`config` with its float settings set to the defaults: the static (hashed) part of a
    config once the floats travel as `FloatSettings`, so float sweeps share a compilation."""
    default = IteRPrimEConfig()
    return config.replace(**{f: getattr(default, f) for f in FloatSettings._fields})


def stretch(x: Array, sharpness: Array | float = 20.0, center: Array | float = 0.5) -> Array:
    """sigmoid(k (x - c)) / max over the last two axes. x: (..., h, w)."""
    s = jax.nn.sigmoid(sharpness * (x - center))
    return s / jnp.max(s, axis=(-2, -1), keepdims=True)


def _hide(heat: Array, floats: FloatSettings) -> Array:
    """Patches explained by `heat` (B, gh, gw): True where stretch(heat) >= threshold."""
    return stretch(heat, floats.stretch_sharpness, floats.stretch_center) >= floats.mask_threshold


def igrs(step: StepFn, batch: int, grid: tuple[int, int], config: IteRPrimEConfig,
         floats: FloatSettings | None = None) -> IGRSResult:
    """Run up to `config.iterations` passes of `step`, refining the keep-mask and the running
    map; stops once no sample is active. `floats`: the float settings (default: the config's;
    traced values avoid recompiling per value)."""
    n = config.iterations
    if n < 1:
        raise ValueError(f"IteRPrimEConfig.iterations must be >= 1, got {n}")
    floats = FloatSettings.of(config) if floats is None else floats
    gh, gw = grid
    a = floats.alpha
    ones = jnp.ones((batch, gh * gw), jnp.int32)
    h0, p0 = step(ones)
    keep = ~_hide(h0, floats)
    scores = jnp.full((batch, n), jnp.nan, jnp.float32).at[:, 0].set(p0)
    heats = jnp.zeros((batch, n, gh, gw), jnp.float32).at[:, 0].set(h0)
    state = (h0, keep, p0, jnp.ones((batch,), bool), jnp.ones((batch,), jnp.int32), scores, heats,
             jnp.ones((batch,), bool))

    def more(carry: tuple[Array, tuple]) -> Array:
        i, state = carry
        return (i < n) & jnp.any(state[3])

    def body(carry: tuple[Array, tuple]) -> tuple[Array, tuple]:
        i, state = carry
        running, keep, prev, active, count, scores, heats, first = state
        hi, pi = step(keep.reshape(batch, -1).astype(jnp.int32))
        accept = active & (pi >= prev)
        rejected_now = active & ~accept
        blended = (1 - a) * running + a * hi
        blend = accept | (rejected_now & config.keep_rejected)
        running = jnp.where(blend[:, None, None], blended, running)
        keep = jnp.where(accept[:, None, None], keep & ~_hide(hi, floats), keep)
        scores = scores.at[:, i].set(jnp.where(active, pi, jnp.nan))
        heats = heats.at[:, i].set(jnp.where(active[:, None, None], hi, 0.0))
        prev = jnp.where(accept, pi, prev)
        return i + 1, (running, keep, prev, accept, count + accept, scores, heats,
                       first & ~blend)

    _, state = jax.lax.while_loop(more, body, (jnp.int32(1), state))
    running, keep, _, _, count, scores, heats, first = state
    return IGRSResult(heat=running, iterations=count, scores=scores, heats=heats, keep=keep,
                      first_pass=first)
