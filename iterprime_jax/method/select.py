"""Selective mask proposals (docs/method.md section 4).

`select_proposal` is jit-able with a fixed number N of (possibly padded) proposals; component
counting (`count_components`) and shape checks (`check_proposals`) run outside jit on numpy.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

__all__ = [
    "Selection",
    "binary_masks",
    "check_proposals",
    "count_components",
    "count_components_device",
    "select_proposal",
    "threshold_mask",
]

_AREA_EPS = 1e-5
_FOUR_CONNECTIVITY = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


class Selection(NamedTuple):
    """Result of `select_proposal`.

    Attributes:
      index: int32 index of the chosen proposal, -1 if no candidate.
      mask: (H, W) bool, the chosen proposal (all False if no candidate).
      has_candidate: bool, some proposal covered a seed and passed the component limit.
    """

    index: jnp.ndarray
    mask: jnp.ndarray
    has_candidate: jnp.ndarray


def binary_masks(masks: Any, name: str = "proposals") -> np.ndarray:
    """Masks as bool, refusing anything that is not plainly binary: bool, or integers whose
    values are all in {0, 1} or all in {0, 255}. Floats (probabilities, logits; even 0.0/1.0),
    NaN and other integer values are a ValueError naming `name`, the dtype and the value
    range: a soft mask's threshold is the caller's decision (e.g. ``masks > 0.5``). The one
    check of the API (`segment*`), the one-image CLI and the proposals readers."""
    arr = np.asarray(masks)
    if arr.dtype == bool:
        return arr
    hint = "threshold them explicitly, e.g. masks > 0.5"
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size:
            finite = arr[np.isfinite(arr)]
            rng = (f"values in [{finite.min():.4g}, {finite.max():.4g}]" if finite.size
                   else "no finite values")
            nan = ", and NaN" if np.isnan(arr).any() else ""
            raise ValueError(f"{name} are {arr.dtype} with {rng}{nan}; masks must be boolean "
                             f"(or integer 0/1 or 0/255): {hint}")
        raise ValueError(f"{name} have dtype {arr.dtype}; masks must be boolean (or integer "
                         f"0/1 or 0/255): {hint}")
    if arr.size == 0:
        return arr.astype(bool)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and (hi <= 1 or (hi == 255 and bool(((arr == 0) | (arr == 255)).all()))):
        return arr != 0
    raise ValueError(f"{name} are {arr.dtype} with values in [{lo}, {hi}]; integer masks must "
                     f"hold only 0/1 or only 0/255: {hint}")


def check_proposals(proposals: Any, image_hw: tuple[int, int],
                    name: str = "proposals") -> np.ndarray:
    """Validate proposals against the image size; returns them as a (N, H, W) bool numpy array.

    Raises:
      ValueError: wrong ndim or spatial size (the message gives both shapes), or masks that
        are not binary (`binary_masks`).
    """
    arr = np.asarray(proposals)
    h, w = (int(x) for x in image_hw)
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (N, H, W) = (N, {h}, {w}); got ndim={arr.ndim}, "
            f"shape {arr.shape}"
        )
    if arr.shape[1:] != (h, w):
        raise ValueError(
            f"{name} have spatial size {arr.shape[1:]} (shape {arr.shape}), expected the "
            f"image size {(h, w)}"
        )
    return binary_masks(arr, name)


def count_components(proposals) -> np.ndarray:
    """Number of 4-connected components of each mask: (N, H, W) bool -> (N,) int32."""
    arr = np.asarray(proposals)
    if arr.ndim != 3:
        raise ValueError(f"proposals must have shape (N, H, W), got {arr.shape}")
    arr = arr.astype(bool, copy=False)
    out = np.zeros((arr.shape[0],), np.int32)
    for i, m in enumerate(arr):
        if m.any():
            _, out[i] = ndimage.label(m, structure=_FOUR_CONNECTIVITY)
    return out


def count_components_device(masks) -> jnp.ndarray:
    """`count_components` on the device (jit-able): (..., H, W) bool -> (...) int32, the
    number of 4-connected components of each mask, exactly as scipy counts them.

    Every mask pixel starts with its own index (1-based) as label and repeatedly takes the
    largest label among itself and its 4 neighbours inside the mask, then the label of the
    pixel its label names (pointer jumping: that pixel is in the same component); when nothing
    changes each component carries its largest pixel index, and it is counted at that pixel.
    """
    m = jnp.asarray(masks).astype(bool)
    h, w = m.shape[-2:]
    own = jnp.arange(1, h * w + 1, dtype=jnp.int32).reshape(h, w)
    lead = m.shape[:-2]

    def grow(lab):
        pad = jnp.pad(lab, [(0, 0)] * len(lead) + [(1, 1), (1, 1)])
        best = jnp.maximum(jnp.maximum(lab, pad[..., :-2, 1:-1]),
                           jnp.maximum(pad[..., 2:, 1:-1], pad[..., 1:-1, :-2]))
        best = jnp.maximum(best, pad[..., 1:-1, 2:])
        best = jnp.where(m, best, 0)
        flat = best.reshape(*lead, h * w)
        jumped = jnp.take_along_axis(flat, jnp.maximum(flat - 1, 0), axis=-1)
        return jnp.where(m, jnp.maximum(best, jumped.reshape(best.shape)), 0)

    def body(carry):
        lab, _ = carry
        new = grow(lab)
        return new, jnp.any(new != lab)

    lab, _ = jax.lax.while_loop(lambda c: c[1], body, (jnp.where(m, own, 0), jnp.bool_(True)))
    return jnp.sum(m & (lab == own), axis=(-2, -1), dtype=jnp.int32)


def threshold_mask(heat, threshold: float = 0.5) -> jnp.ndarray:
    """Baseline without proposals: heat >= threshold -> bool mask."""
    return jnp.asarray(heat) >= threshold


def select_proposal(heat, proposals, valid, num_components, max_components: int = 12
                    ) -> Selection:
    """Pick the proposal the heat map points at.

    seeds = pixels with heat >= max(heat); a proposal is a candidate iff `valid`, it covers a
    seed, and it has <= `max_components` components; score = sum(m * (1 + heat)) /
    (area + 1e-5); the top-scoring candidate wins (ties: the lowest index). No candidate -> index
    -1 and an empty mask.

    Args:
      heat: (H, W) float heat map at proposal resolution.
      proposals: (N, H, W) bool.
      valid: (N,) bool; False marks padding proposals.
      num_components: (N,) int, from `count_components`.
      max_components: the component limit.
    """
    heat = jnp.asarray(heat).astype(jnp.float32)
    props = jnp.asarray(proposals).astype(bool)
    if props.shape[0] == 0:  # static: no proposals at all
        return Selection(index=jnp.int32(-1), mask=jnp.zeros(heat.shape, bool),
                         has_candidate=jnp.asarray(False))
    seeds = heat >= jnp.max(heat)
    covers = jnp.any(props & seeds[None], axis=(1, 2))
    cand = (jnp.asarray(valid).astype(bool) & covers
            & (jnp.asarray(num_components) <= max_components))
    m = props.astype(jnp.float32)
    area = jnp.sum(m, axis=(1, 2))
    score = jnp.sum(m * (1.0 + heat)[None], axis=(1, 2)) / (area + _AREA_EPS)
    score = jnp.where(cand, score, -jnp.inf)
    has = jnp.any(cand)
    best = jnp.argmax(score).astype(jnp.int32)
    index = jnp.where(has, best, jnp.int32(-1))
    mask = jnp.where(has, props[best], jnp.zeros(heat.shape, bool))
    return Selection(index=index, mask=mask, has_candidate=has)
