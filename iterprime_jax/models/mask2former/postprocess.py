"""Mask logits -> binary proposals at the original image size (docs/method.md section 4), jittable.

detectron2 / Mask2Former at test time, per image:

    up = F.interpolate(mask_logits, size=padded_hw, mode="bilinear", align_corners=False)
    up = up[:, :h, :w]                                   # crop to the resized image
    out = F.interpolate(up, size=(H, W), mode="bilinear", align_corners=False)
    proposals = sigmoid(out) > 0.35

Both resizes are separable, so per axis the two linear maps compose into one with at most four
taps per output pixel (`composed_taps`). `resize_logits` applies them along the width as a
(Wo, Wl) matrix product on the low-resolution logits (Q, Hl, Wl), then along the height as
gathers that XLA fuses with the threshold: neither the (Q, Hp, Wp) upsampled logits nor the
(Q, Ho, Wo) float logits are materialised by `postprocess_masks` (on CPU, for 200 queries on a
480x640 image, 200 ms and 98 MB of temporaries against 318 ms and 334 MB in the other order).
The resized size (h, w) and the original size (H, W) are traced values; only the
low-resolution logit size and the output canvas are static, so a dataset compiles once per
(bucket, canvas).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...types import Array


def linear_taps(out_size: int, in_real: Array | int, out_real: Array | int, in_size: int
                ) -> tuple[Array, Array, Array]:
    """1-D bilinear resize of the first `in_real` of `in_size` samples to `out_real` samples,
    like ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis.

    Returns (i0, i1, lam), each (out_size,): output k = (1 - lam) * x[i0] + lam * x[i1];
    entries k >= out_real are computed as if valid (mask them afterwards).
    """
    in_real = jnp.asarray(in_real, jnp.int32)
    scale = in_real.astype(jnp.float32) / jnp.asarray(out_real, jnp.float32)
    dst = jnp.arange(out_size, dtype=jnp.float32)
    src = jnp.maximum(scale * (dst + 0.5) - 0.5, 0.0)  # PyTorch: source index clamped at 0
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_real - 1)
    lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    i1 = jnp.where(i0 < in_real - 1, i0 + 1, i0)
    i0 = jnp.clip(i0, 0, in_size - 1)
    i1 = jnp.clip(i1, 0, in_size - 1)
    return i0, i1, lam


def composed_taps(out_size: int, low_size: int, padded_size: int, resized: Array | int,
                  original: Array | int) -> tuple[Array, Array]:
    """One axis of upsample(low -> padded) . crop(resized) . resize(-> original).

    Returns idx (out_size, 4) int32 into the low-resolution axis and weights (out_size, 4)
    float32; rows >= `original` have zero weights.
    """
    # Second resize: output k reads rows a0, a1 of the upsampled, cropped map.
    a0, a1, lam = linear_taps(out_size, resized, original, padded_size)
    # First resize (low -> padded, static): each upsampled row reads two low rows.
    b0, b1, mu = linear_taps(padded_size, low_size, padded_size, low_size)
    idx = jnp.stack([b0[a0], b1[a0], b0[a1], b1[a1]], axis=-1)
    w = jnp.stack([(1 - lam) * (1 - mu[a0]), (1 - lam) * mu[a0],
                   lam * (1 - mu[a1]), lam * mu[a1]], axis=-1)
    valid = jnp.arange(out_size) < jnp.asarray(original, jnp.int32)
    return idx, jnp.where(valid[:, None], w, 0.0)


def taps_matrix(idx: Array, w: Array, in_size: int) -> Array:
    """(out, 4) taps -> the dense (out, in_size) interpolation matrix."""
    return jnp.sum(jax.nn.one_hot(idx, in_size, dtype=jnp.float32) * w[..., None], axis=1)


def _apply_taps(x: Array, idx: Array, w: Array, axis: int) -> Array:
    """sum_k w[:, k] * take(x, idx[:, k], axis) (weights broadcast along `axis`)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(idx.shape[1]):
        term = jnp.take(x, idx[:, k], axis=axis) * w[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_logits(mask_logits: Array, resized_hw: Array, image_hw: Array,
                  out_hw: tuple[int, int]) -> Array:
    """(Q, Hl, Wl) mask logits of a (4 Hl, 4 Wl) network input -> (Q, Ho, Wo) float32 logits
    at the original image size (top-left image_hw region; zero elsewhere).

    resized_hw, image_hw: (2,) int traced sizes (the resized image inside the padded input,
    the original image); out_hw: static canvas >= image_hw.
    """
    _, hl, wl = mask_logits.shape
    x = mask_logits.astype(jnp.float32)
    ih, iw = composed_taps(out_hw[0], hl, 4 * hl, resized_hw[0], image_hw[0])
    jh, jw = composed_taps(out_hw[1], wl, 4 * wl, resized_hw[1], image_hw[1])
    x = jnp.einsum("qyw,xw->qyx", x, taps_matrix(jh, jw, wl),
                   precision=jax.lax.Precision.HIGHEST)  # (Q, Hl, Wo)
    return _apply_taps(x, ih, iw, axis=1)  # (Q, Ho, Wo): gathers, fused with what follows


def logit_threshold(threshold: float | Array) -> Array:
    """sigmoid(x) > t  <=>  x > log(t / (1 - t)) (sigmoid is increasing)."""
    t = jnp.asarray(threshold, jnp.float32)
    return jnp.log(t) - jnp.log1p(-t)


def postprocess_masks(mask_logits: Array, resized_hw: Array, image_hw: Array,
                      out_hw: tuple[int, int], threshold: float | Array = 0.35) -> Array:
    """(Q, Hl, Wl) mask logits -> (Q, Ho, Wo) bool proposals: sigmoid > threshold at the
    original size, False outside the top-left image_hw region."""
    logits = resize_logits(mask_logits, resized_hw, image_hw, out_hw)
    rows = jnp.arange(out_hw[0])[:, None] < image_hw[0]
    cols = jnp.arange(out_hw[1])[None, :] < image_hw[1]
    return (logits > logit_threshold(threshold)) & (rows & cols)[None]

