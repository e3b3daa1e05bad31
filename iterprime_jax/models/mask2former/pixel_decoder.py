"""Mask2Former pixel decoder: multi-scale deformable-attention encoder + FPN-style fusion.

Mirrors HF `Mask2FormerPixelDecoder`. The three lowest-resolution backbone maps are projected to
`feature_size` (1x1 conv + GroupNorm, `input_projections.{i}`), flattened and refined by
`encoder_layers` deformable-attention layers (sine position + `level_embed`); the higher
resolution maps are then fused top-down (`adapter_{k}` lateral, `layer_{k}` output conv) and the
last one becomes the 1/4-scale mask features (`mask_projection`).

Bilinear sampling is `grid_sample(mode="bilinear", align_corners=False, padding_mode="zeros")`
written as four gathers (one per corner) with out-of-map corners weighted 0.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ...types import Array
from ..blip.common import compute_dtype
from .common import group_norm, layer_norm, resize_bilinear
from .config import Mask2FormerConfig

N_POINTS = 4  # sampling points per head and level (fixed in HF)


@functools.lru_cache(maxsize=64)
def sine_position_embedding(height: int, width: int, num_pos_feats: int,
                            temperature: float = 10000.0) -> np.ndarray:
    """(H, W, 2*num_pos_feats) float32 normalised sine embedding (DETR style, y then x)."""
    scale = np.float32(2 * np.pi)
    eps = np.float32(1e-6)
    y = np.arange(1, height + 1, dtype=np.float32)
    x = np.arange(1, width + 1, dtype=np.float32)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    dim_t = np.arange(num_pos_feats, dtype=np.float32)
    dim_t = np.float32(temperature) ** (2 * np.floor(dim_t / 2) / np.float32(num_pos_feats))
    dim_t = dim_t.astype(np.float32)

    def embed(v: np.ndarray) -> np.ndarray:  # (n,) -> (n, num_pos_feats), sin/cos interleaved
        p = v[:, None] / dim_t
        return np.stack([np.sin(p[:, 0::2]), np.cos(p[:, 1::2])], axis=2).reshape(len(v), -1)

    py = np.broadcast_to(embed(y)[:, None, :], (height, width, num_pos_feats))
    px = np.broadcast_to(embed(x)[None, :, :], (height, width, num_pos_feats))
    return np.concatenate([py, px], axis=-1).astype(np.float32)


def reference_points(shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(sum H*W, 2) float32 pixel-centre (x, y) in [0, 1] of every flattened position."""
    refs = []
    for h, w in shapes:
        ry, rx = np.meshgrid(np.linspace(0.5, h - 0.5, h, dtype=np.float32) / np.float32(h),
                             np.linspace(0.5, w - 0.5, w, dtype=np.float32) / np.float32(w),
                             indexing="ij")
        refs.append(np.stack([rx.reshape(-1), ry.reshape(-1)], -1))
    return np.concatenate(refs, 0).astype(np.float32)


def bilinear_sample(value: Array, height: int, width: int, loc: Array, weight: Array) -> Array:
    """Weighted sum of bilinear samples, `grid_sample(align_corners=False, zeros)` semantics.

    value: (B, heads, H*W, hd); loc: (B, heads, N, P, 2) normalised (x, y), 0..1 spans the map;
    weight: (B, heads, N, P). Returns sum_p weight * sample, (B, heads, N, hd) float32.
    """
    b, nh, n, p, _ = loc.shape
    grid = 2.0 * loc - 1.0  # as HF hands it to grid_sample; then unnormalised like PyTorch
    x = ((grid[..., 0] + 1.0) / 2.0) * width - 0.5
    y = ((grid[..., 1] + 1.0) / 2.0) * height - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    out = jnp.zeros((b, nh, n, value.shape[-1]), jnp.float32)
    for dy, dx, wc in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                       (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        idx = (jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)).astype(jnp.int32)
        g = jnp.take_along_axis(value, idx.reshape(b, nh, n * p, 1), axis=2)
        wt = jnp.where(inside, wc, 0.0) * weight
        out = out + jnp.einsum("bhnpd,bhnp->bhnd", g.reshape(b, nh, n, p, -1).astype(jnp.float32),
                               wt.astype(jnp.float32))
    return out


class MultiscaleDeformableAttention(nn.Module):
    """Deformable attention over all levels (`sampling_offsets`, `attention_weights`,
    `value_proj`, `output_proj`)."""

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, x: Array, pos: Array, shapes: tuple[tuple[int, int], ...]) -> Array:
        """x: (B, S, D) flattened levels; pos: (S, D) or (B, S, D) -> (B, S, D)."""
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        d, nh, nl = cfg.feature_size, cfg.num_attention_heads, len(shapes)
        b, s, _ = x.shape
        q = x + pos
        value = nn.Dense(d, dtype=dt, name="value_proj")(x).reshape(b, s, nh, d // nh)
        offsets = nn.Dense(nh * nl * N_POINTS * 2, dtype=dt, name="sampling_offsets")(q)
        offsets = offsets.astype(jnp.float32).reshape(b, s, nh, nl, N_POINTS, 2)
        attn = nn.Dense(nh * nl * N_POINTS, dtype=dt, name="attention_weights")(q)
        attn = jax.nn.softmax(attn.astype(jnp.float32).reshape(b, s, nh, nl * N_POINTS), -1)
        attn = attn.reshape(b, s, nh, nl, N_POINTS)
        norm = jnp.asarray([[w, h] for h, w in shapes], jnp.float32)  # (L, 2) as (x, y)
        ref = jnp.asarray(reference_points(shapes))  # (S, 2)
        loc = ref[None, :, None, None, None, :] + offsets / norm[None, None, None, :, None, :]
        value = value.transpose(0, 2, 1, 3)  # (B, heads, S, hd)
        out = jnp.zeros((b, nh, s, d // nh), jnp.float32)
        start = 0
        for lvl, (h, w) in enumerate(shapes):
            v = value[:, :, start:start + h * w]
            out = out + bilinear_sample(v, h, w, loc[:, :, :, lvl].transpose(0, 2, 1, 3, 4),
                                        attn[:, :, :, lvl].transpose(0, 2, 1, 3))
            start += h * w
        out = out.transpose(0, 2, 1, 3).reshape(b, s, d).astype(dt)
        return nn.Dense(d, dtype=dt, name="output_proj")(out)


class PixelDecoderEncoderLayer(nn.Module):
    """Post-LN: deformable self-attention, then ReLU FFN (`fc1`, `fc2`)."""

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, x: Array, pos: Array, shapes: tuple[tuple[int, int], ...]) -> Array:
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        y = MultiscaleDeformableAttention(cfg, name="self_attn")(x, pos, shapes)
        x = layer_norm(1e-5, dt, "self_attn_layer_norm")(x + y)
        y = jax.nn.relu(nn.Dense(cfg.encoder_feedforward_dim, dtype=dt, name="fc1")(x))
        y = nn.Dense(cfg.feature_size, dtype=dt, name="fc2")(y)
        return layer_norm(1e-5, dt, "final_layer_norm")(x + y)


class PixelDecoderEncoder(nn.Module):
    config: Mask2FormerConfig

    def setup(self) -> None:
        self.layers = [PixelDecoderEncoderLayer(self.config)
                       for _ in range(self.config.encoder_layers)]

    def __call__(self, x: Array, pos: Array, shapes: tuple[tuple[int, int], ...]) -> Array:
        for layer in self.layers:
            x = layer(x, pos, shapes)
        return x


class PixelDecoder(nn.Module):
    """Backbone maps (stage order, NHWC) -> (mask features (B, H/4, W/4, mask_dim),
    three multi-scale maps (B, h_l, w_l, D), lowest resolution first).

    HF's `nn.Sequential(Conv2d, GroupNorm[, ReLU])` blocks become two children `{name}_0`
    (conv) and `{name}_1` (norm), the names the checkpoint's `{name}.0` / `{name}.1` map to.
    """

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, features: list[Array]) -> tuple[Array, list[Array]]:
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        d, nl = cfg.feature_size, cfg.num_feature_levels
        level_embed = self.param("level_embed", nn.initializers.normal(1.0), (nl, d))
        levels = features[::-1][:nl]  # lowest resolution first
        projected = []
        for i, f in enumerate(levels):
            y = nn.Conv(d, (1, 1), dtype=dt, name=f"input_projections_{i}_0")(f.astype(dt))
            projected.append(group_norm(dt, f"input_projections_{i}_1")(y))
        shapes = tuple((int(p.shape[1]), int(p.shape[2])) for p in projected)
        b = projected[0].shape[0]
        flat = jnp.concatenate([p.reshape(b, -1, d) for p in projected], axis=1)
        pos = jnp.concatenate(
            [jnp.asarray(sine_position_embedding(h, w, d // 2)).reshape(h * w, d)
             + level_embed[i][None].astype(jnp.float32) for i, (h, w) in enumerate(shapes)], 0)
        enc = PixelDecoderEncoder(cfg, name="encoder")(flat, pos.astype(dt), shapes)
        outputs, start = [], 0
        for h, w in shapes:
            outputs.append(enc[:, start:start + h * w].reshape(b, h, w, d))
            start += h * w
        nf = cfg.num_fpn_levels
        for k in range(nf, 0, -1):  # adapter_k fuses backbone map k-1, coarse to fine
            lat = nn.Conv(d, (1, 1), use_bias=False, dtype=dt, name=f"adapter_{k}_0")(
                features[k - 1].astype(dt))
            lat = group_norm(dt, f"adapter_{k}_1")(lat)
            y = lat + resize_bilinear(outputs[-1], lat.shape[1:3])
            y = nn.Conv(d, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dt,
                        name=f"layer_{k}_0")(y)
            outputs.append(jax.nn.relu(group_norm(dt, f"layer_{k}_1")(y)))
        mask_features = nn.Conv(cfg.mask_feature_size, (1, 1), dtype=dt,
                                name="mask_projection")(outputs[-1])
        return mask_features, outputs[:nl]
