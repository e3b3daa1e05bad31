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


class IGRSCarry(NamedTuple):
    """The `while_loop` carry of `igrs`, per sample (leading B): running (gh, gw) map; keep
    (gh, gw) bool keep-mask; prev P(match) of the last accepted pass; active (bool, still
    refining); count (int32, accepted passes); scores (n,) and heats (n, gh, gw) per pass;
    first (bool, `running` is still pass 0's map); and the pass index `i` (a scalar)."""

    i: Array
    running: Array
    keep: Array
    prev: Array
    active: Array
    count: Array
    scores: Array
    heats: Array
    first: Array


def _first_pass(step: StepFn, batch: int, grid: tuple[int, int], n: int,
                floats: FloatSettings) -> IGRSCarry:
    """Pass 0 on the full image: the initial carry (every sample active)."""
    gh, gw = grid
    h0, p0 = step(jnp.ones((batch, gh * gw), jnp.int32))
    return IGRSCarry(
        i=jnp.int32(1), running=h0, keep=~_hide(h0, floats), prev=p0,
        active=jnp.ones((batch,), bool), count=jnp.ones((batch,), jnp.int32),
        scores=jnp.full((batch, n), jnp.nan, jnp.float32).at[:, 0].set(p0),
        heats=jnp.zeros((batch, n, gh, gw), jnp.float32).at[:, 0].set(h0),
        first=jnp.ones((batch,), bool))


def _next_pass(step: StepFn, c: IGRSCarry, config: IteRPrimEConfig, floats: FloatSettings
               ) -> IGRSCarry:
    """One refinement pass on the visible patches: accepted where P(match) did not drop (the
    map blended in, the explained patches hidden), else the sample stops."""
    batch = c.running.shape[0]
    hi, pi = step(c.keep.reshape(batch, -1).astype(jnp.int32))
    accept = c.active & (pi >= c.prev)
    rejected_now = c.active & ~accept
    blended = (1 - floats.alpha) * c.running + floats.alpha * hi
    blend = accept | (rejected_now & config.keep_rejected)
    return IGRSCarry(
        i=c.i + 1,
        running=jnp.where(blend[:, None, None], blended, c.running),
        keep=jnp.where(accept[:, None, None], c.keep & ~_hide(hi, floats), c.keep),
        prev=jnp.where(accept, pi, c.prev),
        active=accept,
        count=c.count + accept,
        scores=c.scores.at[:, c.i].set(jnp.where(c.active, pi, jnp.nan)),
        heats=c.heats.at[:, c.i].set(jnp.where(c.active[:, None, None], hi, 0.0)),
        first=c.first & ~blend)


def igrs(step: StepFn, batch: int, grid: tuple[int, int], config: IteRPrimEConfig,
         floats: FloatSettings | None = None) -> IGRSResult:
    """Run up to `config.iterations` passes of `step`, refining the keep-mask and the running
    map; stops once no sample is active. `floats`: the float settings (default: the config's;
    traced values avoid recompiling per value)."""
    n = config.iterations
    if n < 1:
        raise ValueError(f"IteRPrimEConfig.iterations must be >= 1, got {n}")
    floats = FloatSettings.of(config) if floats is None else floats

    def more(c: IGRSCarry) -> Array:
        return (c.i < n) & jnp.any(c.active)

    c = jax.lax.while_loop(more, lambda c: _next_pass(step, c, config, floats),
                           _first_pass(step, batch, grid, n, floats))
    return IGRSResult(heat=c.running, iterations=c.count, scores=c.scores, heats=c.heats,
                      keep=c.keep, first_pass=c.first)
