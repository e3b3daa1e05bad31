"""Swin transformer backbone, mirroring HF `SwinBackbone` as Mask2Former uses it.

Feature maps stay NHWC. Parameter names follow the checkpoint as published
(`...encoder.encoder.layers.{i}.blocks.{j}.attention.self.query`, `...intermediate.dense`,
`...encoder.hidden_states_norms.stage1`, ...); Flax lists name item i `layers_{i}`.

HF runs the backbone with `always_partition=True`: every block uses the configured window and
shift, even on maps smaller than the window, after zero-padding the map (bottom/right) to a
multiple of the window; the shifted-window mask is built on the padded map.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...types import Array, DType
from ..blip.common import activation, compute_dtype
from .common import layer_norm
from .config import SwinConfig

# HF's shifted-window mask value between tokens of different regions.
_SHIFT_MASK_VALUE = -100.0


@functools.lru_cache(maxsize=16)
def relative_position_index(window: int) -> np.ndarray:
    """(w*w, w*w) int32 index into the (2w-1)^2-row bias table."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    flat = coords.reshape(2, -1)
    rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


@functools.lru_cache(maxsize=64)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """Additive mask (num_windows, w*w, w*w) for shifted windows on a padded (height, width) map:
    0 within a region, -100 across the three cyclic-shift regions per axis."""
    def region(n: int) -> np.ndarray:
        i = np.arange(n)
        return (i >= n - window).astype(np.int64) + (i >= n - shift).astype(np.int64)

    img = (region(height)[:, None] * 3 + region(width)[None, :]).astype(np.float32)
    win = window_partition(img[None, :, :, None], window).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, _SHIFT_MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, window: int):
    """(B, H, W, C) -> (B * H/w * W/w, w, w, C), windows in row-major order (numpy or jax)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: Array, window: int, height: int, width: int) -> Array:
    """(B * nW, w, w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


class SwinSelfAttention(nn.Module):
    """Window attention with relative position bias (names: query/key/value and the table)."""

    config: SwinConfig
    dim: int
    num_heads: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: np.ndarray | None) -> Array:
        """x: (B*nW, N, C) windows; mask: (nW, N, N) additive or None -> context (B*nW, N, C)."""
        cfg = self.config
        dt = compute_dtype(self.dtype)
        ws, h = cfg.window_size, self.num_heads
        hd = self.dim // h
        table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                           ((2 * ws - 1) ** 2, h))
        bw, n, _ = x.shape
        # Heads moved next to the batch before the products: (B*nW, heads, N, hd) operands
        # make batched matmuls XLA runs about twice as fast on CPU as the (B*nW, N, heads, hd)
        # layout (Swin-L window attention, 2-core x86 VM).
        q, k, v = (nn.Dense(self.dim, use_bias=cfg.qkv_bias, dtype=dt, name=nm)(x)
                   .reshape(bw, n, h, hd).transpose(0, 2, 1, 3)
                   for nm in ("query", "key", "value"))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) * hd ** -0.5
        bias = table[relative_position_index(ws).reshape(-1)].reshape(n, n, h)
        scores = scores + bias.transpose(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            scores = scores.reshape(bw // nw, nw, h, n, n) + jnp.asarray(mask)[None, :, None]
            scores = scores.reshape(bw, h, n, n)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        return ctx.transpose(0, 2, 1, 3).reshape(bw, n, self.dim)


class SwinDense(nn.Module):
    """A module holding one Dense called `dense` (HF's SwinSelfOutput / Intermediate / Output)."""

    features: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.features, dtype=compute_dtype(self.dtype), name="dense")(x)


class SwinAttention(nn.Module):
    config: SwinConfig
    dim: int
    num_heads: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: np.ndarray | None) -> Array:
        ctx = SwinSelfAttention(self.config, self.dim, self.num_heads, self.dtype,
                                name="self")(x, mask)
        return SwinDense(self.dim, self.dtype, name="output")(ctx)


class SwinLayer(nn.Module):
    """One Swin block: (shifted) window attention and MLP, each pre-LN with a residual."""

    config: SwinConfig
    dim: int
    num_heads: int
    shift: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        cfg = self.config
        dt = compute_dtype(self.dtype)
        ws, shift = cfg.window_size, self.shift
        b, hgt, wid, c = x.shape
        y = layer_norm(cfg.layer_norm_eps, dt, "layernorm_before")(x)
        pad_h, pad_w = (-hgt) % ws, (-wid) % ws
        y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = hgt + pad_h, wid + pad_w
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        windows = window_partition(y, ws).reshape(-1, ws * ws, c)
        mask = shifted_window_mask(hp, wp, ws, shift) if shift else None
        out = SwinAttention(cfg, self.dim, self.num_heads, self.dtype, name="attention")(
            windows, mask)
        y = window_reverse(out.reshape(-1, ws, ws, c), ws, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y[:, :hgt, :wid]
        y = layer_norm(cfg.layer_norm_eps, dt, "layernorm_after")(x)
        y = SwinDense(int(cfg.mlp_ratio * self.dim), self.dtype, name="intermediate")(y)
        y = activation(cfg.hidden_act)(y)
        return x + SwinDense(self.dim, self.dtype, name="output")(y)


class SwinPatchMerging(nn.Module):
    """2x2 neighbourhood concat (zero-padded to even size), LayerNorm, Linear 4C -> 2C."""

    dim: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        dt = compute_dtype(self.dtype)
        _, h, w, _ = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        # HF order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
        x = jnp.concatenate([x[:, r::2, c::2] for c in range(2) for r in range(2)], axis=-1)
        x = layer_norm(1e-5, dt, "norm")(x)
        return nn.Dense(2 * self.dim, use_bias=False, dtype=dt, name="reduction")(x)


class SwinStage(nn.Module):
    config: SwinConfig
    index: int
    dtype: DType = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        dim = cfg.embed_dim * 2**self.index
        heads = cfg.num_heads[self.index]
        self.blocks = [SwinLayer(cfg, dim, heads, 0 if j % 2 == 0 else cfg.window_size // 2,
                                 self.dtype) for j in range(cfg.depths[self.index])]
        last = self.index == len(cfg.depths) - 1
        self.downsample = None if last else SwinPatchMerging(dim, self.dtype)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """Returns (input of the next stage, this stage's map before downsampling)."""
        for block in self.blocks:
            x = block(x)
        return (x if self.downsample is None else self.downsample(x)), x


class SwinEncoder(nn.Module):
    config: SwinConfig
    dtype: DType = jnp.float32

    def setup(self) -> None:
        self.layers = [SwinStage(self.config, i, self.dtype)
                       for i in range(len(self.config.depths))]

    def __call__(self, x: Array) -> list[Array]:
        """Returns each stage's map before downsampling, (B, H_i, W_i, C_i)."""
        outs = []
        for stage in self.layers:
            x, before = stage(x)
            outs.append(before)
        return outs


class SwinPatchEmbeddings(nn.Module):
    config: SwinConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        """(B, H, W, 3), zero-padded bottom/right to a multiple of the patch -> (B, h, w, C)."""
        p = self.config.patch_size
        _, h, w, _ = pixel_values.shape
        x = jnp.pad(pixel_values, ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
        dt = compute_dtype(self.dtype)
        return nn.Conv(self.config.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=dt,
                       name="projection")(x.astype(dt))


class SwinEmbeddings(nn.Module):
    config: SwinConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        x = SwinPatchEmbeddings(self.config, self.dtype, name="patch_embeddings")(pixel_values)
        return layer_norm(1e-5, compute_dtype(self.dtype), "norm")(x)


class SwinStageNorms(nn.Module):
    """One LayerNorm per output stage, named by the stage (`hidden_states_norms.stage1`)."""

    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, stage: str, x: Array) -> Array:
        return layer_norm(1e-5, compute_dtype(self.dtype), stage)(x)


class SwinBackbone(nn.Module):
    """(B, H, W, 3) -> the `out_features` maps, each normalised, NHWC, in stage order."""

    config: SwinConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> list[Array]:
        cfg = self.config
        stem = SwinEmbeddings(cfg, self.dtype, name="embeddings")(pixel_values)
        maps = [stem] + SwinEncoder(cfg, self.dtype, name="encoder")(stem)
        norms = SwinStageNorms(self.dtype, name="hidden_states_norms")
        by_name = dict(zip(cfg.stage_names, maps, strict=True))
        return [norms(stage, by_name[stage]) for stage in cfg.out_features]
