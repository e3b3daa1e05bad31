"""Mask2Former with a Swin backbone (HF `Mask2FormerForUniversalSegmentation`) in Flax, and the
pure functions over it: `init_params`, `abstract_params`, `mask2former_forward`.

Parameter tree (names of the published checkpoint, `.N.` -> `_N`):
`model/pixel_level_module/{encoder (Swin), decoder (pixel decoder)}`,
`model/transformer_module/...`, `class_predictor`. `config` (frozen, hashable) is a static
argument under `jax.jit`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ...types import Array, Params
from ..blip.common import compute_dtype
from .config import Mask2FormerConfig
from .decoder import TransformerModule
from .pixel_decoder import PixelDecoder
from .swin import SwinBackbone


class PixelLevelModule(nn.Module):
    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, pixel_values: Array) -> tuple[Array, list[Array]]:
        feats = SwinBackbone(self.config.backbone, self.config.dtype, name="encoder")(pixel_values)
        return PixelDecoder(self.config, name="decoder")(feats)


class Mask2FormerModel(nn.Module):
    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, pixel_values: Array) -> tuple[Array, Array]:
        mask_features, multi_scale = PixelLevelModule(self.config, name="pixel_level_module")(
            pixel_values)
        return TransformerModule(self.config, name="transformer_module")(multi_scale,
                                                                         mask_features)


class Mask2FormerForUniversalSegmentation(nn.Module):
    """(B, H, W, 3) normalised pixels -> class logits (B, Q, K+1), mask logits (B, Q, H4, W4)."""

    config: Mask2FormerConfig

    @nn.compact
    def __call__(self, pixel_values: Array) -> tuple[Array, Array]:
        cfg = self.config
        queries, masks = Mask2FormerModel(cfg, name="model")(pixel_values)
        logits = nn.Dense(cfg.num_labels + 1, dtype=compute_dtype(cfg.dtype),
                          name="class_predictor")(queries)
        return logits.astype(jnp.float32), masks.astype(jnp.float32)


def _module(config: Mask2FormerConfig) -> Mask2FormerForUniversalSegmentation:
    return Mask2FormerForUniversalSegmentation(config)


def _init_size(config: Mask2FormerConfig) -> int:
    """A small input size that exercises every stage (parameters do not depend on it)."""
    return config.backbone.patch_size * 2 ** (len(config.backbone.depths) - 1)


def init_params(config: Mask2FormerConfig, rng: Array) -> Params:
    """Random parameters with the checkpoint's tree structure (float32)."""
    s = _init_size(config)
    x = jnp.zeros((1, s, s, config.backbone.num_channels), jnp.float32)
    return jax.jit(_module(config.replace(dtype=jnp.float32)).init)(rng, x)["params"]


@functools.lru_cache(maxsize=8)
def abstract_params(config: Mask2FormerConfig) -> Params:
    """Shapes/dtypes of the parameter tree (no computation; cached per config, do not mutate)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def check_pixels(config: Mask2FormerConfig, pixel_values: Array) -> None:
    """Raise ValueError naming `pixel_values` unless it is (B, H, W, C) float, B, H, W >= 1."""
    c = config.backbone.num_channels
    shape = tuple(pixel_values.shape)
    if len(shape) != 4 or shape[-1] != c or min(shape[:3]) < 1:
        raise ValueError(f"pixel_values must be (B, H, W, {c}) NHWC with B, H, W >= 1, got "
                         f"shape {shape}")
    if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
        raise ValueError(f"pixel_values must be float and already normalised, got dtype "
                         f"{pixel_values.dtype}")


def mask2former_forward(params: Params, config: Mask2FormerConfig, pixel_values: Array
                        ) -> tuple[Array, Array]:
    """Mask2Former forward pass, equal to HF's last-layer outputs.

    pixel_values: (B, H, W, 3) float32, already normalised (mean/std on 0-255 values).
    Returns `(class_logits (B, Q, K+1), mask_logits (B, Q, ceil(H/4), ceil(W/4)))`, float32
    (HF `class_queries_logits`, `masks_queries_logits`). `config.dtype` picks the compute dtype
    (`jnp.bfloat16` for accelerators). Jit it with `config` static (`mask2former_forward_jit`);
    un-jitted it runs op by op (slow).

    Float32 agreement with PyTorch is ~1e-5 relative, except that the masked attention
    thresholds resized mask logits at 0: a logit within rounding of 0 (|x| ~ 1e-7) can fall on
    the other side in one implementation, and that query's attention (then, through
    self-attention, every query) moves by ~1e-3 in the following layers. At Swin-L size with
    random weights this happened in 1 of 3 seeds at 384x384 (max |diff| 7e-3 in an
    intermediate layer, 9e-4 at the output).
    """
    check_pixels(config, pixel_values)
    return _module(config).apply({"params": params}, pixel_values)


@functools.partial(jax.jit, static_argnums=1)
def mask2former_forward_jit(params: Params, config: Mask2FormerConfig, pixel_values: Array
                            ) -> tuple[Array, Array]:
    """`mask2former_forward` compiled (config static; one compile per input shape)."""
    return mask2former_forward(params, config, pixel_values)
