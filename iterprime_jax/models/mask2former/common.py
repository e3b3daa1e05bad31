"""Pieces shared by the Mask2Former modules: norms with PyTorch's two-pass variance, and
PyTorch-exact bilinear resizing (`F.interpolate(mode="bilinear", align_corners=False)`)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ...types import Array


def layer_norm(eps: float, dtype: jnp.dtype, name: str) -> nn.LayerNorm:
    """LayerNorm over the last axis; variance as E[(x - mean)^2], like PyTorch."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def group_norm(dtype: jnp.dtype, name: str, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(32) over NHWC (eps 1e-5, PyTorch's two-pass variance)."""
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                        name=name)


@functools.lru_cache(maxsize=256)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of PyTorch's bilinear resize along one axis
    (align_corners=False, no antialiasing, also when shrinking)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = (src - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), np.float32(1.0) - lam1)
    np.add.at(m, (rows, i1), lam1)
    return m


def resize_bilinear(x: Array, size: tuple[int, int], axes: tuple[int, int] = (1, 2)) -> Array:
    """Resize two axes of `x` (default: H, W of NHWC) to `size` as PyTorch bilinear does."""
    (ah, aw), (h, w) = axes, size
    if x.shape[ah] == h and x.shape[aw] == w:
        return x
    mh = jnp.asarray(bilinear_matrix(x.shape[ah], h), x.dtype)
    mw = jnp.asarray(bilinear_matrix(x.shape[aw], w), x.dtype)
    x = jnp.moveaxis(jnp.tensordot(mh, x, axes=([1], [ah])), 0, ah)
    return jnp.moveaxis(jnp.tensordot(mw, x, axes=([1], [aw])), 0, aw)
