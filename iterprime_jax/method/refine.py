"""Iterative Grad-CAM Refinement (IGRS, docs/method.md section 3) as a jitted `fori_loop`.

The loop is batch-native with static shapes: every sample runs every pass; a sample whose match
probability dropped is frozen by masking (`active`), not by Python control flow.

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


def stretch(x: Array, sharpness: float = 20.0, center: float = 0.5) -> Array:
    """sigmoid(k (x - c)) / max over the last two axes. x: (..., h, w)."""
    s = jax.nn.sigmoid(sharpness * (x - center))
    return s / jnp.max(s, axis=(-2, -1), keepdims=True)


def _hide(heat: Array, config: IteRPrimEConfig) -> Array:
    """Patches explained by `heat` (B, gh, gw): True where stretch(heat) >= threshold."""
    return stretch(heat, config.stretch_sharpness, config.stretch_center) >= config.mask_threshold


def igrs(step: StepFn, batch: int, grid: tuple[int, int], config: IteRPrimEConfig
         ) -> IGRSResult:
    """Run `config.iterations` passes of `step`, refining the keep-mask and the running map."""
    n = config.iterations
    if n < 1:
        raise ValueError(f"IteRPrimEConfig.iterations must be >= 1, got {n}")
    gh, gw = grid
    a = config.alpha
    ones = jnp.ones((batch, gh * gw), jnp.int32)
    h0, p0 = step(ones)
    keep = ~_hide(h0, config)
    scores = jnp.full((batch, n), jnp.nan, jnp.float32).at[:, 0].set(p0)
    heats = jnp.zeros((batch, n, gh, gw), jnp.float32).at[:, 0].set(h0)
    state = (h0, keep, p0, jnp.ones((batch,), bool), jnp.ones((batch,), jnp.int32), scores, heats,
             jnp.ones((batch,), bool))

    def body(i: Array, state: tuple) -> tuple:
        running, keep, prev, active, count, scores, heats, first = state
        hi, pi = step(keep.reshape(batch, -1).astype(jnp.int32))
        accept = active & (pi >= prev)
        rejected_now = active & ~accept
        blended = (1 - a) * running + a * hi
        blend = accept | (rejected_now & config.keep_rejected)
        running = jnp.where(blend[:, None, None], blended, running)
        keep = jnp.where(accept[:, None, None], keep & ~_hide(hi, config), keep)
        scores = scores.at[:, i].set(jnp.where(active, pi, jnp.nan))
        heats = heats.at[:, i].set(jnp.where(active[:, None, None], hi, 0.0))
        prev = jnp.where(accept, pi, prev)
        return running, keep, prev, accept, count + accept, scores, heats, first & ~blend

    running, keep, _, _, count, scores, heats, first = jax.lax.fori_loop(1, n, body, state)
    return IGRSResult(heat=running, iterations=count, scores=scores, heats=heats, keep=keep,
                      first_pass=first)
