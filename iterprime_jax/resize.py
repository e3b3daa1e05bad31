"""Bicubic resampling weights as PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`
computes them along one axis: `bicubic_weights(in, out)` is the (out, in) matrix W with
W @ x = x resized.

Shared by the method (`method.heat.resize_heatmap`: heat maps to image pixels) and the models
(`models.albef.convert.resize_pos_embed`: a ViT position grid to another image size), so
neither imports the other for it.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["bicubic_weights"]

_CUBIC_A = -0.75  # PyTorch's bicubic kernel coefficient (jax.image uses Keys' -0.5)


def _cubic_taps(t: jnp.ndarray) -> jnp.ndarray:
    """Cubic-convolution weights (..., 4) of the taps at offsets -1, 0, 1, 2 for the fractional
    source position t in [0, 1) (A = -0.75, as PyTorch)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_weights(in_size: int, out_size, length: int | None = None) -> jnp.ndarray:
    """(length, in_size) float32 matrix W with W @ x = x resized from in_size to out_size
    samples, as PyTorch `F.interpolate(mode="bicubic", align_corners=False)` does along one
    axis: source coordinate (dst + 0.5) * in/out - 0.5 (not clamped), taps floor-1..floor+2 with
    indices clamped to the border, no antialiasing.

    `out_size` may be a traced scalar (jit-friendly): rows at or past it are zero, so one
    compilation serves every size up to `length` (default: out_size, which must then be static).
    """
    if length is None:
        length = int(out_size)
    out_f = jnp.asarray(out_size, jnp.float32)
    scale = jnp.float32(in_size) / out_f
    dst = jnp.arange(length, dtype=jnp.float32)
    src = (dst + 0.5) * scale - 0.5
    base = jnp.floor(src)
    taps = _cubic_taps(src - base)  # (length, 4)
    idx = jnp.clip(base.astype(jnp.int32)[:, None] + jnp.arange(-1, 3)[None, :], 0, in_size - 1)
    onehot = jnp.arange(in_size)[None, None, :] == idx[:, :, None]  # (length, 4, in)
    w = jnp.sum(jnp.where(onehot, taps[:, :, None], 0.0), axis=1)
    return jnp.where((dst < out_f)[:, None], w, 0.0)
