"""BLIP image-text matching model (HF `BlipForImageTextRetrieval`) as one Flax module."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...types import Params
from .common import Array, compute_dtype
from .config import BlipConfig
from .text import BlipTextModel
from .vision import BlipVisionModel


class BlipForImageTextRetrieval(nn.Module):
    """Holds every checkpoint parameter; methods pick the part of the model a caller needs.

    Top-level names: `vision_model`, `text_encoder`, `vision_proj`, `text_proj`, `itm_head`.
    `delta_layer` selects the text layer whose cross-attention probabilities receive `delta`.
    """

    config: BlipConfig
    delta_layer: int = -1

    def setup(self) -> None:
        cfg = self.config
        dt = compute_dtype(cfg.dtype)
        self.vision_model = BlipVisionModel(cfg.vision, cfg.dtype)
        self.text_encoder = BlipTextModel(cfg.text, cfg.dtype, self.delta_layer)
        self.vision_proj = nn.Dense(cfg.projection_dim, dtype=dt)
        self.text_proj = nn.Dense(cfg.projection_dim, dtype=dt)
        self.itm_head = nn.Dense(2, dtype=dt)

    def __call__(self, pixel_values: Array, input_ids: Array, attention_mask: Array,
                 image_mask: Array | None = None) -> Array:
        """Full ITM forward, (B, 2) logits. Also runs the contrastive projections (unused by
        ITM) so that `init` creates every checkpoint parameter."""
        image_embeds = self.encode_image(pixel_values)
        hidden, _ = self.text_hidden(image_embeds, input_ids, attention_mask, image_mask)
        if self.is_initializing():
            self.vision_proj(image_embeds[:, 0])
            self.text_proj(hidden[:, 0])
        return self.itm_head(hidden[:, 0]).astype(jnp.float32)

    def encode_image(self, pixel_values: Array) -> Array:
        """(B, H, W, 3) -> (B, 1 + gh*gw, Dv)."""
        return self.vision_model(pixel_values)

    def match(self, image_embeds: Array, input_ids: Array, attention_mask: Array,
              image_mask: Array | None = None, delta: Array | None = None
              ) -> tuple[Array, tuple[Array, ...]]:
        """ITM head on text [CLS] after cross-attending to `image_embeds`.

        image_embeds: (B, S, Dv); input_ids/attention_mask: (B, T); image_mask: (B, S - 1)
        over patches (1 = visible, CLS always visible) or None.
        Returns logits (B, 2) float32 and per-layer cross-attention probs (B, heads, T, S).
        """
        hidden, crosses = self.text_hidden(image_embeds, input_ids, attention_mask, image_mask,
                                           delta)
        return self.itm_head(hidden[:, 0]).astype(jnp.float32), crosses

    def text_hidden(self, image_embeds: Array, input_ids: Array, attention_mask: Array,
                    image_mask: Array | None = None, delta: Array | None = None
                    ) -> tuple[Array, tuple[Array, ...]]:
        """Text encoder output (B, T, D) and per-layer cross-attention probabilities."""
        full_mask = None
        if image_mask is not None:
            ones = jnp.ones((image_mask.shape[0], 1), image_mask.dtype)
            full_mask = jnp.concatenate([ones, image_mask], axis=1)
        return self.text_encoder(input_ids, attention_mask, image_embeds, full_mask, delta)


def example_inputs(config: Any, batch: int = 1, text_len: int = 4
                   ) -> tuple[Array, Array, Array]:
    """Zero pixels (B, H, W, 3), ids and a full mask (B, T) for an ITM module's `init`
    (`config`: a BLIP or ALBEF config; parameters do not depend on B or T)."""
    h, w = config.vision.image_hw
    return (jnp.zeros((batch, h, w, 3), jnp.float32), jnp.zeros((batch, text_len), jnp.int32),
            jnp.ones((batch, text_len), jnp.int32))


def init_module_params(module: nn.Module, rng: Array) -> Params:
    """Random parameters of an ITM module (BLIP's or ALBEF's) with the checkpoint's tree."""
    return module.init(rng, *example_inputs(module.config))["params"]


def abstract_module_params(module: nn.Module) -> Params:
    """Shapes/dtypes of an ITM module's parameter tree (no computation)."""
    return jax.eval_shape(lambda: init_module_params(module, jax.random.PRNGKey(0)))


def abstract_params(config: BlipConfig) -> Params:
    """Shapes/dtypes of BLIP's parameter tree (no computation)."""
    return abstract_module_params(BlipForImageTextRetrieval(config))
