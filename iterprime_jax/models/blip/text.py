"""BERT text encoder with cross-attention to the image, mirroring HF `BlipTextModel`.

Post-LN BERT layers: self-attention, cross-attention to `encoder_hidden_states` (image embeds),
feed-forward. Names follow the PyTorch state dict
(`text_encoder.encoder.layer.{i}.attention.self.query`, `...crossattention.output.LayerNorm`,
...), Flax lists naming layer i `layer_{i}`.

Grad-CAM hook: `cross_attn_delta` (B, heads, T, N_img) is added to the cross-attention
probabilities of layer `delta_layer` (zero for a forward pass); the gradient of any output with
respect to it is the gradient with respect to those probabilities.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ...types import DType
from .common import Array, activation, compute_dtype, masked_softmax
from .config import TextConfig


class BlipTextSelfAttention(nn.Module):
    config: TextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, kv: Array, mask: Array | None,
                 delta: Array | None = None) -> tuple[Array, Array]:
        """x: (B, T, D) queries; kv: (B, S, Dk); mask: (B, S) 1 = visible.

        Returns context (B, T, D) and probabilities (B, heads, T, S) float32.
        """
        cfg = self.config
        dt = compute_dtype(self.dtype)
        d, h = cfg.hidden_size, cfg.num_attention_heads
        hd = d // h
        b, t, _ = x.shape
        s = kv.shape[1]
        # heads-major operands (B, heads, T, hd): XLA's batched matmuls run faster so on CPU
        q = nn.Dense(d, dtype=dt, name="query")(x).reshape(b, t, h, hd).transpose(0, 2, 1, 3)
        k = nn.Dense(d, dtype=dt, name="key")(kv).reshape(kv.shape[0], s, h, hd)
        v = nn.Dense(d, dtype=dt, name="value")(kv).reshape(kv.shape[0], s, h, hd)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        # A batch-1 `kv` (one image, many sentences) is shared: keys/values computed once.
        kv_sub = "hkd" if kv.shape[0] == 1 and b > 1 else "bhkd"
        k, v = (k[0], v[0]) if kv_sub == "hkd" else (k, v)
        scores = jnp.einsum(f"bhqd,{kv_sub}->bhqk", q, k) / jnp.sqrt(jnp.float32(hd)).astype(dt)
        probs = masked_softmax(scores, None if mask is None else mask[:, None, None, :])
        if delta is not None:
            probs = probs + delta
        ctx = jnp.einsum(f"bhqk,{kv_sub}->bhqd", probs.astype(dt), v)
        return ctx.transpose(0, 2, 1, 3).reshape(b, t, d), probs


class BlipTextSelfOutput(nn.Module):
    config: TextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual: Array) -> Array:
        dt = compute_dtype(self.dtype)
        x = nn.Dense(self.config.hidden_size, dtype=dt, name="dense")(x)
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=dt,
                            name="LayerNorm")(x + residual)


class BlipTextAttention(nn.Module):
    config: TextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, kv: Array, mask: Array | None,
                 delta: Array | None = None) -> tuple[Array, Array]:
        ctx, probs = BlipTextSelfAttention(self.config, self.dtype, name="self")(x, kv, mask, delta)
        return BlipTextSelfOutput(self.config, self.dtype, name="output")(ctx, x), probs


class BlipTextIntermediate(nn.Module):
    config: TextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dt = compute_dtype(self.dtype)
        x = nn.Dense(self.config.intermediate_size, dtype=dt, name="dense")(x)
        return activation(self.config.hidden_act)(x)


class BlipTextLayer(nn.Module):
    """One BERT layer: self-attention, then (with `cross`) cross-attention into the image, then
    FFN. `cross=False` is a text-only layer (ALBEF's layers below its fusion layer)."""

    config: TextConfig
    dtype: DType = jnp.float32
    cross: bool = True

    @nn.compact
    def __call__(self, x: Array, attention_mask: Array, image_embeds: Array,
                 image_mask: Array | None, delta: Array | None = None
                 ) -> tuple[Array, Array | None]:
        """Returns the layer output (B, T, D) and cross-attention probs (B, heads, T, S), or
        None for a text-only layer."""
        cfg = self.config
        x, _ = BlipTextAttention(cfg, self.dtype, name="attention")(x, x, attention_mask)
        cross = None
        if self.cross:
            x, cross = BlipTextAttention(cfg, self.dtype, name="crossattention")(
                x, image_embeds, image_mask, delta)
        y = BlipTextIntermediate(cfg, self.dtype, name="intermediate")(x)
        # BertOutput has the same shape as BertSelfOutput: dense, then LayerNorm(y + residual).
        return BlipTextSelfOutput(cfg, self.dtype, name="output")(y, x), cross


class BlipTextEmbeddings(nn.Module):
    config: TextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array) -> Array:
        """input_ids: (B, T) int -> (B, T, D)."""
        cfg = self.config
        dt = compute_dtype(self.dtype)
        words = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
        pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                       name="position_embeddings")(jnp.arange(input_ids.shape[1])[None])
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="LayerNorm")(words + pos)


class BlipTextEncoder(nn.Module):
    """The layers `layer_0..L-1`; layers below `fusion_layer` (ALBEF's; BLIP: 0, every layer
    cross-attends) are text-only. Returns (B, T, D) and each layer's cross-attention probs
    (None for a text-only layer)."""

    config: TextConfig
    dtype: DType = jnp.float32
    delta_layer: int = -1
    fusion_layer: int = 0

    def setup(self) -> None:
        self.layer = [BlipTextLayer(self.config, self.dtype, i >= self.fusion_layer)
                      for i in range(self.config.num_hidden_layers)]

    def __call__(self, x: Array, attention_mask: Array, image_embeds: Array,
                 image_mask: Array | None, delta: Array | None = None
                 ) -> tuple[Array, tuple[Array | None, ...]]:
        crosses = []
        for i, layer in enumerate(self.layer):
            x, cross = layer(x, attention_mask, image_embeds, image_mask,
                             delta if i == self.delta_layer else None)
            crosses.append(cross)
        return x, tuple(crosses)


class BlipTextModel(nn.Module):
    """Text encoder: (B, T) ids + (B, S, Dv) image embeds -> (B, T, D) and cross-attentions."""

    config: TextConfig
    dtype: DType = jnp.float32
    delta_layer: int = -1

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, image_embeds: Array,
                 image_mask: Array | None = None, delta: Array | None = None
                 ) -> tuple[Array, tuple[Array, ...]]:
        x = BlipTextEmbeddings(self.config, self.dtype, name="embeddings")(input_ids)
        return BlipTextEncoder(self.config, self.dtype, self.delta_layer, name="encoder")(
            x, attention_mask, image_embeds.astype(x.dtype), image_mask, delta)
