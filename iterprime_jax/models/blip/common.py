"""Small shared pieces of the Flax BLIP port: dtypes, activations, attention masks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ...types import Array, DType

COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def compute_dtype(dtype: DType | str) -> jnp.dtype:
    """A compute dtype (``jnp.float32``, ``jnp.bfloat16``, ``jnp.float16`` or its name) as a
    `jnp.dtype`; anything else is a ValueError."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute dtype {dtype!r}; use float32 or bfloat16")
    return dt


def activation(name: str) -> Callable[[Array], Array]:
    """HF activation names -> jax functions ("gelu" is the exact erf form, as in PyTorch)."""
    table: dict[str, Callable[[Array], Array]] = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "relu": jax.nn.relu,
    }
    if name not in table:
        raise ValueError(f"unsupported hidden_act {name!r}")
    return table[name]


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax over the last axis in float32; `mask` broadcasts to `scores`, 0 = hidden.

    scores: (B, heads, Tq, Tk); mask: (B, 1, 1, Tk) or None. Returns float32 probabilities.
    """
    scores = scores.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask > 0, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)
