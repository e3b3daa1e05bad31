"""Pure functions over the Flax ITM model: `fn(params, config, inputs) -> outputs`.

`config` (a frozen `BlipConfig` or `AlbefConfig`) is hashable, so it can be a static argument
of `jax.jit`. Its architecture (`models.architectures.architecture_of`: BLIP ->
`BlipForImageTextRetrieval`, ALBEF -> `iterprime_jax.models.albef.AlbefForITM`) builds the
module; both modules have the same methods, so every function here (and Grad-CAM, `segment`)
serves both.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ...types import Array, Params
from ..architectures import architecture_of
from ..loaded import ItmConfig
from .itm import init_module_params


def _module(config: ItmConfig, delta_layer: int = -1) -> nn.Module:
    """The ITM module of `config`'s architecture (the table's `module`)."""
    return architecture_of(config).module(config, delta_layer=delta_layer)


def init_params(config: ItmConfig, rng: Array) -> Params:
    """Random parameters with the checkpoint's tree structure."""
    return init_module_params(_module(config), rng)


def abstract_params(config: ItmConfig) -> Params:
    """Shapes/dtypes of the parameter tree (no computation)."""
    return architecture_of(config).abstract_params(config)


def _check_text(input_ids: Array, attention_mask: Array) -> None:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} "
                         "must both be (B, T)")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"empty text batch: input_ids has shape {input_ids.shape}")


def _check_pixels(config: ItmConfig, pixel_values: Array) -> None:
    h, w = config.vision.image_hw
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (h, w, 3):
        raise ValueError(f"pixel_values must be (B, {h}, {w}, 3) NHWC, got {pixel_values.shape}")
    if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
        raise ValueError(f"pixel_values must be float (use preprocess_image), got "
                         f"{pixel_values.dtype}")


def encode_image(params: Params, config: ItmConfig, pixel_values: Array) -> Array:
    """(B, H, W, 3) float pixels -> (B, 1 + gh*gw, Dv) image embeddings."""
    _check_pixels(config, pixel_values)
    return _module(config).apply({"params": params}, pixel_values,
                                 method="encode_image")


def match_from_embeds(params: Params, config: ItmConfig, image_embeds: Array, input_ids: Array,
                      attention_mask: Array, image_mask: Array | None = None,
                      delta: Array | None = None, delta_layer: int = -1
                      ) -> tuple[Array, tuple[Array, ...]]:
    """ITM logits (B, 2) and per-layer cross-attention probs (B, heads, T, 1 + gh*gw) (for
    ALBEF, None for the text-only layers below `fusion_layer`).

    image_mask: (B, gh*gw), 1 = visible (CLS always visible). `delta` (B, heads, T, 1+gh*gw) is
    added to layer `delta_layer`'s cross-attention probabilities (Grad-CAM hook).
    """
    _check_text(input_ids, attention_mask)
    return _module(config, delta_layer).apply(
        {"params": params}, image_embeds, input_ids, attention_mask, image_mask, delta,
        method="match")


def itm_logits(params: Params, config: ItmConfig, pixel_values: Array, input_ids: Array,
               attention_mask: Array, image_mask: Array | None = None) -> Array:
    """(B, 2) ITM logits (no-match, match) for images (B, H, W, 3) and texts (B, T).

    jit with `config` static: `jax.jit(itm_logits, static_argnums=1)`.
    """
    image_embeds = encode_image(params, config, pixel_values)
    logits, _ = match_from_embeds(params, config, image_embeds, input_ids, attention_mask,
                                  image_mask)
    return logits

