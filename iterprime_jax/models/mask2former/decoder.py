"""Mask2Former transformer module: masked-attention decoder, mask predictor (mirrors HF
`Mask2FormerTransformerModule`, `Mask2FormerMaskedAttentionDecoder`, `...MaskPredictor`).

Learned queries (`queries_features`) with query position embeddings (`queries_embedder`) go
through `decoder_layers - 1` layers, each: masked cross-attention to one of the three pixel-
decoder levels (round robin, lowest resolution first), self-attention, FFN. The cross-attention
mask of a layer comes from the previous mask prediction bilinearly resized to that level:
positions with sigmoid < 0.5 are hidden, unless that hides every position of a query.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...types import Array, DType
from ..blip.common import activation, compute_dtype
from .common import layer_norm, resize_bilinear
from .config import Mask2FormerConfig
from .pixel_decoder import sine_position_embedding


def _attend(q: Array, k: Array, v: Array, heads: int, hidden: Array | None = None) -> Array:
    """Scaled dot-product attention; q (B, T, D) already projected and scaled, k/v (B, S, D).
    `hidden` (B, T, S) bool hides key positions (True = hidden). Returns (B, T, D)."""
    b, t, d = q.shape
    hd = d // heads
    q, k, v = (x.reshape(b, -1, heads, hd).transpose(0, 2, 1, 3) for x in (q, k, v))
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k).astype(jnp.float32)  # heads-major: faster
    if hidden is not None:
        scores = jnp.where(hidden[:, None], -jnp.inf, scores)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bhts,bhsd->bhtd", probs, v).transpose(0, 2, 1, 3).reshape(b, t, d)


class MultiheadCrossAttention(nn.Module):
    """`torch.nn.MultiheadAttention` (packed `in_proj_weight` (3D, D) / `in_proj_bias`,
    `out_proj`): query/key carry position embeddings, the value does not."""

    dim: int
    heads: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, query: Array, key: Array, value: Array, hidden: Array | None) -> Array:
        dt = compute_dtype(self.dtype)
        d = self.dim
        w = self.param("in_proj_weight", nn.initializers.xavier_uniform(), (3 * d, d))
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,))
        w, bias = w.astype(dt), bias.astype(dt)
        q = (query @ w[:d].T + bias[:d]) * (d // self.heads) ** -0.5
        k = key @ w[d:2 * d].T + bias[d:2 * d]
        v = value @ w[2 * d:].T + bias[2 * d:]
        out = _attend(q, k, v, self.heads, hidden)
        return nn.Dense(d, dtype=dt, name="out_proj")(out)


class SelfAttention(nn.Module):
    """HF `Mask2FormerAttention` as self-attention: q/k from x + pos, v from x."""

    dim: int
    heads: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, pos: Array) -> Array:
        dt = compute_dtype(self.dtype)
        d = self.dim
        xp = x + pos
        q = nn.Dense(d, dtype=dt, name="q_proj")(xp) * (d // self.heads) ** -0.5
        k = nn.Dense(d, dtype=dt, name="k_proj")(xp)
        v = nn.Dense(d, dtype=dt, name="v_proj")(x)
        return nn.Dense(d, dtype=dt, name="out_proj")(_attend(q, k, v, self.heads))


class MaskedAttentionDecoderLayer(nn.Module):
    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, x: Array, query_pos: Array, memory: Array, memory_pos: Array,
                 hidden: Array) -> Array:
        """x: (B, Q, D); memory/memory_pos: (B, S, D) / (S, D); hidden: (B, Q, S) bool."""
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        d, nh = cfg.hidden_dim, cfg.num_attention_heads
        cross = MultiheadCrossAttention(d, nh, cfg.dtype, name="cross_attn")
        selfa = SelfAttention(d, nh, cfg.dtype, name="self_attn")
        ln_cross = layer_norm(1e-5, dt, "cross_attn_layer_norm")
        ln_self = layer_norm(1e-5, dt, "self_attn_layer_norm")
        ln_ffn = layer_norm(1e-5, dt, "final_layer_norm")
        fc1 = nn.Dense(cfg.dim_feedforward, dtype=dt, name="fc1")
        fc2 = nn.Dense(d, dtype=dt, name="fc2")
        act = activation(cfg.activation_function)

        def ffn(y: Array) -> Array:
            return fc2(act(fc1(y)))

        if cfg.pre_norm:
            y = ln_cross(x)
            x = x + cross(y + query_pos, memory + memory_pos, memory, hidden)
            y = ln_self(x)
            x = x + selfa(y, query_pos)
            return x + ffn(ln_ffn(x))
        x = ln_cross(x + cross(x + query_pos, memory + memory_pos, memory, hidden))
        x = ln_self(x + selfa(x, query_pos))
        return ln_ffn(x + ffn(x))


class MaskPredictor(nn.Module):
    """3-layer ReLU MLP (`mask_embedder.{i}.0`) on the queries, dotted with the mask features."""

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, queries: Array, mask_features: Array, target: tuple[int, int]
                 ) -> tuple[Array, Array]:
        """queries (B, Q, D), mask_features (B, H4, W4, C) -> mask logits (B, Q, H4, W4)
        float32 and the next cross-attention mask (B, Q, h*w) bool at `target` (True = hidden)."""
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        y = queries
        for i, width in enumerate((cfg.hidden_dim, cfg.hidden_dim, cfg.mask_feature_size)):
            y = nn.Dense(width, dtype=dt, name=f"mask_embedder_{i}_0")(y)
            y = jax.nn.relu(y) if i < 2 else y
        logits = jnp.einsum("bqc,bhwc->bqhw", y, mask_features.astype(dt)).astype(jnp.float32)
        small = resize_bilinear(logits, target, axes=(2, 3))
        hidden = jax.nn.sigmoid(small).reshape(*small.shape[:2], -1) < 0.5
        return logits, jax.lax.stop_gradient(hidden)


class MaskedAttentionDecoder(nn.Module):
    config: Mask2FormerConfig

    def setup(self) -> None:
        cfg = self.config
        self.layers = [MaskedAttentionDecoderLayer(cfg) for _ in range(cfg.decoder_layers - 1)]
        self.layernorm = layer_norm(1e-5, compute_dtype(cfg.dtype), "layernorm")
        self.mask_predictor = MaskPredictor(cfg)

    def __call__(self, queries: Array, query_pos: Array, memories: list[Array],
                 memory_pos: list[Array], sizes: list[tuple[int, int]], mask_features: Array
                 ) -> tuple[Array, Array]:
        """Returns the last layer's normed queries (B, Q, D) and mask logits (B, Q, H4, W4)."""
        nl = len(memories)
        x = queries
        normed = self.layernorm(x)
        masks, hidden = self.mask_predictor(normed, mask_features, sizes[0])
        for i, layer in enumerate(self.layers):
            lvl = i % nl
            # a query whose mask hides everything attends everywhere instead
            hidden = hidden & ~jnp.all(hidden, axis=-1, keepdims=True)
            x = layer(x, query_pos, memories[lvl], memory_pos[lvl], hidden)
            normed = self.layernorm(x)
            masks, hidden = self.mask_predictor(normed, mask_features, sizes[(i + 1) % nl])
        return normed, masks


class QueryTable(nn.Module):
    """An `nn.Embedding` whose table is used whole (`weight` -> `embedding`)."""

    num: int
    dim: int

    @nn.compact
    def __call__(self) -> Array:
        return self.param("embedding", nn.initializers.normal(1.0), (self.num, self.dim))


class TransformerModule(nn.Module):
    """Multi-scale maps (lowest resolution first, NHWC) + mask features -> (normed queries
    (B, Q, D), mask logits (B, Q, H4, W4))."""

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, multi_scale: list[Array], mask_features: Array) -> tuple[Array, Array]:
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        d, nl = cfg.hidden_dim, cfg.num_feature_levels
        level_embed = QueryTable(nl, d, name="level_embed")()
        project = cfg.feature_size != d or cfg.enforce_input_projection
        memories, memory_pos, sizes = [], [], []
        for i in range(nl):
            f = multi_scale[i]
            b, h, w, _ = f.shape
            sizes.append((h, w))
            memory_pos.append(jnp.asarray(sine_position_embedding(h, w, d // 2)).reshape(h * w, d)
                              .astype(dt))
            if project:
                f = nn.Conv(d, (1, 1), dtype=dt, name=f"input_projections_{i}")(f)
            memories.append((f.reshape(b, h * w, d) + level_embed[i].astype(dt)).astype(dt))
        b = multi_scale[0].shape[0]
        query_pos = QueryTable(cfg.num_queries, d, name="queries_embedder")().astype(dt)
        queries = QueryTable(cfg.num_queries, d, name="queries_features")().astype(dt)
        queries = jnp.broadcast_to(queries[None], (b, *queries.shape))
        return MaskedAttentionDecoder(cfg, name="decoder")(
            queries, query_pos[None], memories, memory_pos, sizes, mask_features)
