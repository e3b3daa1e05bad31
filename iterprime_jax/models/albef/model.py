"""ALBEF image-text matching as one Flax module, named like the `ALBEF.pth` state dict.

- `visual_encoder`: timm ViT (`cls_token`, `pos_embed` (1, 1 + gh*gw, D), `patch_embed/proj`,
  `blocks_{i}/{norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2}`, `norm`): the BLIP block
  maths (`BlipEncoderLayer`) under timm's names.
- `text_encoder/bert`: `embeddings/{word,position,token_type}_embeddings` + `LayerNorm`, then
  `encoder/layer_{i}`: BERT self-attention (bidirectional, text mask), for i >= `fusion_layer`
  cross-attention into all image tokens, then the FFN; post-LN residuals (BLIP's text blocks).
- `itm_head`: Dense(2) on the text [CLS] output; index 1 = match.

Grad-CAM hook as BLIP's: `delta` is added to the cross-attention probabilities of
`delta_layer`, which must be a fusion layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ...types import Array, DType, Params
from ..blip.common import compute_dtype
from ..blip.config import VisionConfig
from ..blip.itm import abstract_module_params
from ..blip.text import BlipTextEncoder
from ..blip.vision import TIMM_NAMES, BlipEncoderLayer, with_class_and_positions
from .config import AlbefConfig, AlbefTextConfig


class AlbefVisionTransformer(nn.Module):
    """(B, H, W, 3) float pixels -> (B, 1 + gh*gw, D) (after the final `norm`)."""

    config: VisionConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        cfg = self.config
        dt = compute_dtype(self.dtype)
        d = cfg.hidden_size
        cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d))
        pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                               (1, cfg.num_patches + 1, d))
        patches = PatchEmbed(cfg, self.dtype, name="patch_embed")(pixel_values)
        x = with_class_and_positions(patches, cls_token, pos_embed, dt)
        for i in range(cfg.num_hidden_layers):
            x = BlipEncoderLayer(cfg, self.dtype, TIMM_NAMES, name=f"blocks_{i}")(x)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="norm")(x)


class PatchEmbed(nn.Module):
    """timm `PatchEmbed`: a stride-p conv (`proj`), patches flattened row-major -> (B, N, D)."""

    config: VisionConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        cfg = self.config
        dt = compute_dtype(self.dtype)
        p = cfg.patch_size
        x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=dt,
                    name="proj")(pixel_values.astype(dt))
        return x.reshape(x.shape[0], -1, cfg.hidden_size)


class AlbefBertEmbeddings(nn.Module):
    """word + position + token type 0, then LayerNorm: (B, T) ids -> (B, T, D)."""

    config: AlbefTextConfig
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array) -> Array:
        cfg = self.config
        dt = compute_dtype(self.dtype)
        t = input_ids.shape[1]
        words = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
        pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                       name="position_embeddings")(jnp.arange(t)[None])
        types = nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                         name="token_type_embeddings")(jnp.zeros((1, t), jnp.int32))
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt,
                            name="LayerNorm")(words + pos + types)


class AlbefBertModel(nn.Module):
    """`text_encoder.bert`: ids (B, T) + image embeds (B|1, S, Dv) -> (B, T, D), cross probs."""

    config: AlbefTextConfig
    dtype: DType = jnp.float32
    delta_layer: int = -1

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, image_embeds: Array,
                 image_mask: Array | None = None, delta: Array | None = None
                 ) -> tuple[Array, tuple[Array | None, ...]]:
        x = AlbefBertEmbeddings(self.config, self.dtype, name="embeddings")(input_ids)
        return BlipTextEncoder(self.config, self.dtype, self.delta_layer,
                               self.config.fusion_layer, name="encoder")(
            x, attention_mask, image_embeds.astype(x.dtype), image_mask, delta)


class AlbefTextEncoder(nn.Module):
    """`text_encoder` (ALBEF's BertForMaskedLM without its MLM head `cls`)."""

    config: AlbefTextConfig
    dtype: DType = jnp.float32
    delta_layer: int = -1

    @nn.compact
    def __call__(self, *args: Array | None) -> tuple[Array, tuple[Array | None, ...]]:
        return AlbefBertModel(self.config, self.dtype, self.delta_layer, name="bert")(*args)


class AlbefForITM(nn.Module):
    """Holds every inference parameter of `ALBEF.pth`; the same methods as BLIP's module
    (`__call__`, `encode_image`, `match`, `text_hidden`), so the functional API serves both.

    Cross-attention tuples have one entry per text layer: None below `fusion_layer`."""

    config: AlbefConfig
    delta_layer: int = -1

    def setup(self) -> None:
        cfg = self.config
        if 0 <= self.delta_layer < cfg.text.fusion_layer:
            raise ValueError(f"text layer {self.delta_layer} has no cross-attention: ALBEF's "
                             f"fusion layers start at fusion_layer={cfg.text.fusion_layer} "
                             f"(use a layer in [{cfg.text.fusion_layer}, "
                             f"{cfg.text.num_hidden_layers}))")
        self.visual_encoder = AlbefVisionTransformer(cfg.vision, cfg.dtype)
        self.text_encoder = AlbefTextEncoder(cfg.text, cfg.dtype, self.delta_layer)
        self.itm_head = nn.Dense(2, dtype=compute_dtype(cfg.dtype))

    def __call__(self, pixel_values: Array, input_ids: Array, attention_mask: Array,
                 image_mask: Array | None = None) -> Array:
        """Full ITM forward: (B, 2) float32 logits."""
        logits, _ = self.match(self.encode_image(pixel_values), input_ids, attention_mask,
                               image_mask)
        return logits

    def encode_image(self, pixel_values: Array) -> Array:
        """(B, H, W, 3) -> (B, 1 + gh*gw, Dv)."""
        return self.visual_encoder(pixel_values)

    def match(self, image_embeds: Array, input_ids: Array, attention_mask: Array,
              image_mask: Array | None = None, delta: Array | None = None
              ) -> tuple[Array, tuple[Array | None, ...]]:
        """ITM logits (B, 2) float32 and per-layer cross-attention probs (B, heads, T, S)
        (None below the fusion layer). image_mask: (B, S - 1) over patches, CLS visible."""
        hidden, crosses = self.text_hidden(image_embeds, input_ids, attention_mask, image_mask,
                                           delta)
        return self.itm_head(hidden[:, 0]).astype(jnp.float32), crosses

    def text_hidden(self, image_embeds: Array, input_ids: Array, attention_mask: Array,
                    image_mask: Array | None = None, delta: Array | None = None
                    ) -> tuple[Array, tuple[Array | None, ...]]:
        """Text encoder output (B, T, D) and per-layer cross-attention probabilities."""
        full_mask = None
        if image_mask is not None:
            ones = jnp.ones((image_mask.shape[0], 1), image_mask.dtype)
            full_mask = jnp.concatenate([ones, image_mask], axis=1)
        return self.text_encoder(input_ids, attention_mask, image_embeds, full_mask, delta)


def abstract_params(config: AlbefConfig) -> Params:
    """Shapes/dtypes of ALBEF's parameter tree (no computation)."""
    return abstract_module_params(AlbefForITM(config))
