"""Initial parameters of the small ITM model (`init_model`), shared by the ViT pretraining
(`pretrain`) and the ITM training (`trainer`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from iterprime_jax.models.blip.config import BlipConfig
from iterprime_jax.models.blip.modeling import init_params
from iterprime_jax.types import Params

from .config import TrainConfig


def posemb_sincos_2d(gh: int, gw: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """(1, 1 + gh*gw, width) float32: row 0 (the CLS position) zeros, then per patch (row-major)
    [sin(y w), cos(y w), sin(x w), cos(x w)] over the width/4 frequencies
    w_k = temperature^(-k / (width/4))."""
    if width % 4:
        raise ValueError(f"sincos position embeddings need width % 4 == 0, got {width}")
    q = width // 4
    omega = 1.0 / temperature ** (np.arange(q) / q)
    y, x = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ya = y.reshape(-1, 1) * omega
    xa = x.reshape(-1, 1) * omega
    pe = np.concatenate([np.sin(ya), np.cos(ya), np.sin(xa), np.cos(xa)], axis=1)
    return np.concatenate([np.zeros((1, width)), pe])[None].astype(np.float32)


def init_model(recipe: TrainConfig, config: BlipConfig, key: jax.Array) -> Params:
    """`init_params`, with Dense kernels scaled by `init_scale` and embeddings at std
    1/sqrt(width) (BERT's 0.02 leaves tiny models' cross-attention uniform); with
    `pos_init="sincos"` the vision position embeddings start as `pos_scale` times
    `posemb_sincos_2d`."""
    if recipe.pos_init not in ("normal", "sincos"):
        raise ValueError(f"pos_init must be 'normal' or 'sincos', got {recipe.pos_init!r}")
    params = init_params(config, key)
    emb_std = 1.0 / math.sqrt(recipe.width)
    keys = iter(jax.random.split(jax.random.fold_in(key, 1), 64))

    def fix(path: tuple, x: jax.Array) -> jax.Array:
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "position_embedding" and recipe.pos_init == "sincos":
            gh, gw = config.vision.grid
            return jnp.asarray(recipe.pos_scale * posemb_sincos_2d(gh, gw, x.shape[-1]), x.dtype)
        if names[-1] == "kernel" and recipe.init_scale != 1.0:
            return x * recipe.init_scale
        if names[-1] == "embedding" or names[-1] in ("position_embedding", "class_embedding"):
            return emb_std * jax.random.normal(next(keys), x.shape, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(fix, params)
