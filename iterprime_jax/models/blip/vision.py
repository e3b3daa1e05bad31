"""ViT image encoder, mirroring HF `BlipVisionModel` (pre-LN blocks, fused qkv).

Parameter names follow the PyTorch state dict (`vision_model.embeddings.patch_embedding`,
`vision_model.encoder.layers.{i}.self_attn.qkv`, ...), Flax lists naming layer i `layers_{i}`.
The block (`BlipEncoderLayer`) is the same maths as a timm ViT block; `BlockNames` gives it
timm's names (`norm1`, `attn.qkv`, `attn.proj`, ...) for ALBEF (`iterprime_jax.models.albef`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ...types import DType
from .common import Array, activation, compute_dtype, masked_softmax
from .config import VisionConfig


@dataclasses.dataclass(frozen=True)
class BlockNames:
    """Submodule names of one pre-LN ViT block (BLIP's by default; `TIMM_NAMES` for timm)."""

    norm1: str = "layer_norm1"
    attn: str = "self_attn"
    proj: str = "projection"
    norm2: str = "layer_norm2"
    mlp: str = "mlp"


BLIP_NAMES = BlockNames()
TIMM_NAMES = BlockNames(norm1="norm1", attn="attn", proj="proj", norm2="norm2", mlp="mlp")


class BlipAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` Dense and an output Dense (`proj_name`)."""

    config: VisionConfig
    dtype: DType = jnp.float32
    proj_name: str = "projection"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: (B, N, D) -> (B, N, D)."""
        cfg = self.config
        dt = compute_dtype(self.dtype)
        b, n, d = x.shape
        h = cfg.num_attention_heads
        qkv = nn.Dense(3 * d, dtype=dt, name="qkv")(x).reshape(b, n, 3, h, d // h)
        # heads-major operands (B, heads, N, hd): XLA's batched matmuls run faster so on CPU
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (d // h) ** -0.5
        probs = masked_softmax(scores, None).astype(dt)
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return nn.Dense(d, dtype=dt, name=self.proj_name)(ctx)


class BlipMLP(nn.Module):
    config: VisionConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dt = compute_dtype(self.dtype)
        x = nn.Dense(self.config.intermediate_size, dtype=dt, name="fc1")(x)
        x = activation(self.config.hidden_act)(x)
        return nn.Dense(self.config.hidden_size, dtype=dt, name="fc2")(x)


class BlipEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x)); submodules named by `names`."""

    config: VisionConfig
    dtype: DType = jnp.float32
    names: BlockNames = BLIP_NAMES

    @nn.compact
    def __call__(self, x: Array) -> Array:
        eps = self.config.layer_norm_eps
        dt = compute_dtype(self.dtype)
        n = self.names
        y = nn.LayerNorm(epsilon=eps, dtype=dt, name=n.norm1)(x)
        x = x + BlipAttention(self.config, self.dtype, n.proj, name=n.attn)(y)
        y = nn.LayerNorm(epsilon=eps, dtype=dt, name=n.norm2)(x)
        return x + BlipMLP(self.config, self.dtype, name=n.mlp)(y)


class BlipEncoder(nn.Module):
    config: VisionConfig
    dtype: DType = jnp.float32

    def setup(self) -> None:
        self.layers = [BlipEncoderLayer(self.config, self.dtype)
                       for _ in range(self.config.num_hidden_layers)]

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x


def with_class_and_positions(patches: Array, class_embedding: Array,
                             position_embedding: Array, dtype: jnp.dtype) -> Array:
    """(B, N, D) patch embeddings -> (B, 1 + N, D): the class embedding (1, 1, D) prepended and
    the position embeddings (1, >= 1 + N, D) added (BLIP's and timm's ViT alike)."""
    b, _, d = patches.shape
    cls = jnp.broadcast_to(class_embedding.astype(dtype), (b, 1, d))
    x = jnp.concatenate([cls, patches], axis=1)
    return x + position_embedding[:, : x.shape[1]].astype(dtype)


class BlipVisionEmbeddings(nn.Module):
    config: VisionConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        """pixel_values: (B, H, W, 3) NHWC -> (B, 1 + gh*gw, D), patches in row-major order."""
        cfg = self.config
        dt = compute_dtype(self.dtype)
        d, p = cfg.hidden_size, cfg.patch_size
        class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (1, 1, d))
        position_embedding = self.param("position_embedding", nn.initializers.normal(0.02),
                                        (1, cfg.num_patches + 1, d))
        patches = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=dt,
                          name="patch_embedding")(pixel_values.astype(dt))
        patches = patches.reshape(patches.shape[0], -1, d)
        return with_class_and_positions(patches, class_embedding, position_embedding, dt)


class BlipVisionModel(nn.Module):
    """(B, H, W, 3) float pixels -> (B, 1 + gh*gw, D) image embeddings (post-LN)."""

    config: VisionConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        x = BlipVisionEmbeddings(self.config, self.dtype, name="embeddings")(pixel_values)
        x = BlipEncoder(self.config, self.dtype, name="encoder")(x)
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=compute_dtype(self.dtype),
                            name="post_layernorm")(x)
