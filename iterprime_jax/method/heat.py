"""Heat map from Grad-CAM over cross-attention, with Primary Word Emphasis (METHOD.md section 2).

All functions are pure `jax.numpy`, jit-able and vmap-able, with static shapes: token sets are
boolean masks over the T text positions (not index lists), and the choice between the
primary-word / no-primary-word / no-focus-word cases is made with `jnp.where` on scalars.

Inputs for one sentence:
  attn:    (heads, T, gh, gw) cross-attention probabilities over image patches (image CLS dropped).
  grad:    (heads, T, gh, gw) raw gradients of the match logit w.r.t. `attn` (relu applied here).
  valid:   (T,) attention mask (1 = real token, 0 = padding); position 0 is the text [CLS].
  focus:   (T,) focus-word WordPiece positions (primary word included).
  primary: (T,) primary-word WordPiece positions.

`resize_heatmap` is the one upsampling of a patch-grid heat map to pixels (bicubic), used by
the pipeline and by the training diagnostics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["heat_map", "minmax_normalize", "plain_heat", "pwe_heat", "resize_heatmap"]

_NORM_EPS = 1e-8


def minmax_normalize(x: jnp.ndarray) -> jnp.ndarray:
    """Map `x` to [0, 1] by min-max; a constant map becomes all zeros."""
    x = x.astype(jnp.float32)
    lo = jnp.min(x)
    rng = jnp.max(x) - lo
    safe = jnp.where(rng > 0, rng, 1.0)
    return jnp.where(rng > 0, (x - lo) / safe, jnp.zeros_like(x))


def _prepare(attn, grad, valid):
    """float32 cam / relu(grad) with padding tokens zeroed, and the float validity mask."""
    v = jnp.asarray(valid).astype(jnp.float32)
    vb = v[None, :, None, None]
    cam = jnp.asarray(attn).astype(jnp.float32) * vb
    g = jnp.maximum(jnp.asarray(grad).astype(jnp.float32), 0.0) * vb
    return cam, g, v


def _tok_sum(w, x):
    """sum_t w[t] * x[:, t] for x (heads, T, gh, gw) -> (heads, gh, gw)."""
    return jnp.einsum("t,htij->hij", w, x)


def pwe_heat(attn, grad, valid, focus, primary) -> jnp.ndarray:
    """PWE heat map (gh, gw) float32 in [0, 1].

    With a primary word (M = primary positions, O = focus minus M, |F| = number of focus
    positions, per head and pixel):
      mg, mc = mean over M of relu(grad), cam;  mm = mg * mc
      D_o = mc - cam_o, divided by its L2 norm over o in O (zero norm -> 1e-8)
      heat_h = ( grad_cls*cam_cls + sum_o D_o*mg*mm + sum_t w_t grad_t*cam_t ) / (1 + |O| + sum w),
      w_t = focus_t + primary_t * |F|   (F = focus with M's positions appended |F| more times).
    Without a primary word: heat_h = mean_S(grad) * mean_S(cam), S = focus + [CLS], or all valid
    tokens when there is no focus word. Then mean over heads and min-max normalisation.
    """
    cam, g, v = _prepare(attn, grad, valid)
    T = v.shape[0]
    f = jnp.asarray(focus).astype(jnp.float32) * v
    p = jnp.asarray(primary).astype(jnp.float32) * v
    o = f * (1.0 - p)
    n_f = jnp.sum(f)
    n_p = jnp.sum(p)
    n_o = jnp.sum(o)

    # --- primary-word branch -------------------------------------------------------------
    inv_np = 1.0 / jnp.maximum(n_p, 1.0)
    mg = _tok_sum(p, g) * inv_np  # (h, gh, gw)
    mc = _tok_sum(p, cam) * inv_np
    mm = mg * mc
    d = (mc[:, None] - cam) * o[None, :, None, None]  # (h, T, gh, gw); zero outside O
    norm = jnp.sqrt(jnp.sum(d * d, axis=1))  # (h, gh, gw)
    norm = jnp.where(norm == 0, _NORM_EPS, norm)
    enhanced = jnp.sum(d, axis=1) / norm * mg * mm  # sum over O of the enhanced maps
    w = f + p * n_f
    gc = g * cam
    cls_term = gc[:, 0]
    weighted = _tok_sum(w, gc)
    pwe = (cls_term + enhanced + weighted) / (1.0 + n_o + jnp.sum(w))

    # --- no primary word: product of token means over S ----------------------------------
    cls = jnp.zeros((T,), jnp.float32).at[0].set(1.0)
    s = jnp.where(n_f > 0, jnp.maximum(f, cls), v)
    inv_ns = 1.0 / jnp.maximum(jnp.sum(s), 1.0)
    nop = (_tok_sum(s, g) * inv_ns) * (_tok_sum(s, cam) * inv_ns)

    per_head = jnp.where(n_p > 0, pwe, nop)
    return minmax_normalize(jnp.mean(per_head, axis=0))


def plain_heat(attn, grad, valid) -> jnp.ndarray:
    """The "no PWE" ablation: mean over heads and all non-padding tokens of relu(grad) * cam,
    min-max normalised -> (gh, gw) float32 in [0, 1]."""
    cam, g, v = _prepare(attn, grad, valid)
    per_head = _tok_sum(v, g * cam) / jnp.maximum(jnp.sum(v), 1.0)
    return minmax_normalize(jnp.mean(per_head, axis=0))


def heat_map(attn, grad, valid, focus, primary, use_pwe: bool = True) -> jnp.ndarray:
    """`pwe_heat` if `use_pwe` (a static Python bool) else `plain_heat`."""
    if use_pwe:
        return pwe_heat(attn, grad, valid, focus, primary)
    return plain_heat(attn, grad, valid)


def resize_heatmap(heat: jnp.ndarray, image_hw: jnp.ndarray, canvas: int) -> jnp.ndarray:
    """(gh, gw) patch-grid map -> (canvas, canvas): bicubic with half-pixel centres, the grid
    stretched over the top-left ``image_hw`` (2,) int region (a traced value, so one
    compilation serves every image size on the canvas); values outside the region are
    unspecified (callers mask them)."""
    gh, gw = heat.shape
    hw = jnp.asarray(image_hw).astype(jnp.float32)
    scale = jnp.stack([hw[0] / gh, hw[1] / gw])
    return jax.image.scale_and_translate(heat, (canvas, canvas), (0, 1), scale,
                                         jnp.zeros(2, jnp.float32), method="cubic",
                                         antialias=False)
