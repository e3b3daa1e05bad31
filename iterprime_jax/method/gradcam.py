"""Grad-CAM over the text encoder's cross-attention (docs/method.md section 1).

The gradient of the ITM match logit with respect to layer L's cross-attention probabilities is
taken with `jax.grad` through an additive zero perturbation of those probabilities. The image
embeddings enter as constants (`stop_gradient`), so the backward pass never enters the image
encoder; with a batch-1 `image_embeds`, all sentences share the image's keys/values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..models.blip.config import BlipConfig
from ..models.blip.modeling import encode_image, match_from_embeds
from ..types import Array, Params


class GradCAM(NamedTuple):
    """Cross-attention maps and their gradients for the image patches (CLS token dropped).

    attn, grad: (B, heads, T, gh, gw); grad is raw (before relu), padding tokens included.
    match_prob: (B,) softmax(logits)[:, 1]; logits: (B, 2).
    """

    attn: Array
    grad: Array
    match_prob: Array
    logits: Array


def _to_grid(x: Array, grid: tuple[int, int]) -> Array:
    """(B, heads, T, 1 + gh*gw) -> (B, heads, T, gh, gw), dropping the image CLS token."""
    return x[..., 1:].reshape(*x.shape[:-1], *grid)


def gradcam_from_embeds(params: Params, config: BlipConfig, image_embeds: Array,
                        input_ids: Array, attention_mask: Array, layer: int = 8,
                        image_mask: Array | None = None) -> GradCAM:
    """Grad-CAM of layer `layer` given precomputed image embeddings.

    image_embeds: (B, S, Dv) or (1, S, Dv) shared by all B sentences; input_ids,
    attention_mask: (B, T); image_mask: (B, gh*gw) 1 = visible patch (or None).
    """
    n_layers = config.text.num_hidden_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer text encoder")
    b, t = input_ids.shape
    s = image_embeds.shape[1]
    if s != config.vision.num_patches + 1:
        raise ValueError(f"image_embeds has {s} tokens, config expects "
                         f"{config.vision.num_patches + 1}")
    embeds = jax.lax.stop_gradient(image_embeds)
    delta0 = jnp.zeros((b, config.text.num_attention_heads, t, s), jnp.float32)

    def match_logit(delta: Array) -> tuple[Array, tuple[Array, Array]]:
        logits, crosses = match_from_embeds(params, config, embeds, input_ids, attention_mask,
                                            image_mask, delta=delta, delta_layer=layer)
        # Sample b's logit depends on delta[b] only, so the grad of the sum is per-sample.
        return logits[:, 1].sum(), (logits, crosses[layer])

    grad, (logits, attn) = jax.grad(match_logit, has_aux=True)(delta0)
    grid = config.vision.grid
    return GradCAM(attn=_to_grid(attn, grid), grad=_to_grid(grad, grid),
                   match_prob=jax.nn.softmax(logits, axis=-1)[:, 1], logits=logits)


def cross_attention_gradcam(params: Params, config: BlipConfig, pixel_values: Array,
                            input_ids: Array, attention_mask: Array, layer: int = 8,
                            image_mask: Array | None = None) -> GradCAM:
    """Grad-CAM from pixels (B, H, W, 3): the image encoder runs forward only."""
    image_embeds = encode_image(params, config, pixel_values)
    return gradcam_from_embeds(params, config, image_embeds, input_ids, attention_mask, layer,
                               image_mask)
