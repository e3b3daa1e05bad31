"""Heat map from Grad-CAM over cross-attention, with Primary Word Emphasis
(docs/method.md section 2).

All functions are pure `jax.numpy`, jit-able and vmap-able, with static shapes: token sets are
boolean masks over the T text positions (not index lists), and the choice between the
primary-word / no-primary-word / no-focus-word cases is made with `jnp.where` on scalars.
`resize_heatmap` is the one upsampling path from the patch grid to image pixels (docs/method.md
section 3, "Output"), exactly PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`.

Inputs for one sentence:
  attn:    (heads, T, gh, gw) cross-attention probabilities over image patches (image CLS dropped).
  grad:    (heads, T, gh, gw) raw gradients of the match logit w.r.t. `attn` (relu applied here).
  valid:   (T,) attention mask (1 = real token, 0 = padding); position 0 is the text [CLS].
  focus:   (T,) focus-word WordPiece positions (primary word included).
  primary: (T,) primary-word WordPiece positions.

`resize_heatmap` is used by the pipeline and by the training diagnostics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..resize import bicubic_weights

__all__ = ["NO_PRIMARY_TOKENS", "bicubic_weights", "heat_map", "minmax_normalize",
           "plain_heat", "pwe_heat", "resize_heatmap"]

_NORM_EPS = 1e-8
# Token sets averaged when there is no primary word (IteRPrimEConfig.no_primary_tokens):
#   "authors": the authors' code as written: all non-padding tokens when the expression has
#              focus words, [CLS] alone when it has none;
#   "focus":   the evident intent: focus tokens plus [CLS] ([CLS] alone without focus words).
NO_PRIMARY_TOKENS = ("authors", "focus")


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


def _no_primary_tokens(v, f, mode: str):
    """(T,) float weights of the tokens averaged without a primary word (see NO_PRIMARY_TOKENS).
    v: valid mask, f: focus mask (both float, padding already zeroed)."""
    if mode not in NO_PRIMARY_TOKENS:
        raise ValueError(f"no_primary_tokens must be one of {NO_PRIMARY_TOKENS}, got {mode!r}")
    cls = jnp.zeros_like(v).at[0].set(1.0)
    has_focus = jnp.sum(f) > 0
    if mode == "authors":
        return jnp.where(has_focus, v, cls)
    return jnp.maximum(f, cls)


def pwe_heat(attn, grad, valid, focus, primary, no_primary: str = "authors",
             authors_code: bool = False) -> jnp.ndarray:
    """PWE heat map (gh, gw) float32 in [0, 1].

    With a primary word (M = primary positions, O = focus minus M, |F| = number of focus
    positions, per head and pixel):
      mg, mc = mean over M of relu(grad), cam;  mm = mg * mc
      D_o = mc - cam_o, divided by its L2 norm over o in O (zero norm -> 1e-8)
      heat_h = ( grad_cls*cam_cls + sum_o D_o*mg*mm + sum_t w_t grad_t*cam_t ) / (1 + |O| + sum w),
      w_t = focus_t + primary_t * |F|   (F = focus with M's positions appended |F| more times),
    then the mean over heads. With `authors_code` (a static bool) and O empty, the authors'
    code compares mc with one all-zero map: one more map mg * mm (where mc > 0) in the
    numerator and 1 in the denominator.
    Without a primary word: for each token t of a set S, (mean over heads of relu(grad_t)) *
    (mean over heads of cam_t), averaged over S; S is chosen by `no_primary` (a static string,
    see NO_PRIMARY_TOKENS; default: the authors' code). Finally min-max normalisation.
    """
    cam, g, v = _prepare(attn, grad, valid)
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
    n_extra = jnp.float32(0.0)
    if authors_code:  # O empty: D = mc - 0, D / |D| = 1 where mc > 0 -> the map mg * mm
        n_extra = jnp.where(n_o == 0, 1.0, 0.0)
        enhanced = enhanced + n_extra * jnp.where(mc > 0, mg * mm, 0.0)
    w = f + p * n_f
    gc = g * cam
    cls_term = gc[:, 0]
    weighted = _tok_sum(w, gc)
    pwe = jnp.mean((cls_term + enhanced + weighted) / (1.0 + n_o + n_extra + jnp.sum(w)),
                   axis=0)

    # --- no primary word: per token (head-mean grad) * (head-mean cam), mean over S -------
    s = _no_primary_tokens(v, f, no_primary)
    per_token = jnp.mean(g, axis=0) * jnp.mean(cam, axis=0)  # (T, gh, gw)
    nop = jnp.einsum("t,tij->ij", s, per_token) / jnp.maximum(jnp.sum(s), 1.0)

    return minmax_normalize(jnp.where(n_p > 0, pwe, nop))


def plain_heat(attn, grad, valid) -> jnp.ndarray:
    """The "no PWE" ablation: mean over heads and all non-padding tokens of relu(grad) * cam,
    min-max normalised -> (gh, gw) float32 in [0, 1]."""
    cam, g, v = _prepare(attn, grad, valid)
    per_head = _tok_sum(v, g * cam) / jnp.maximum(jnp.sum(v), 1.0)
    return minmax_normalize(jnp.mean(per_head, axis=0))


def heat_map(attn, grad, valid, focus, primary, use_pwe: bool = True,
             no_primary: str = "authors", authors_code: bool = False) -> jnp.ndarray:
    """`pwe_heat` if `use_pwe` (a static Python bool) else `plain_heat`."""
    if use_pwe:
        return pwe_heat(attn, grad, valid, focus, primary, no_primary, authors_code)
    return plain_heat(attn, grad, valid)


# --------------------------------------------------------------------------- upsampling
def resize_heatmap(heat, size, canvas: int | None = None) -> jnp.ndarray:
    """Bicubic resize of a (gh, gw) map to `size` = (H, W), exactly as PyTorch
    `F.interpolate(heat[None, None], size=(H, W), mode="bicubic", align_corners=False)`
    (up to float32 rounding). No normalisation.

    Without `canvas`, `size` is static and the result is (H, W). With `canvas` (a static int),
    `size` may be traced: the result is (canvas, canvas) with the resized map in the top-left
    (H, W) region and zeros elsewhere, so one compilation serves every image on that canvas.
    """
    heat = jnp.asarray(heat, jnp.float32)
    if heat.ndim != 2:
        raise ValueError(f"resize_heatmap expects a (gh, gw) map, got shape {heat.shape}")
    gh, gw = heat.shape
    if canvas is None:
        size = (int(size[0]), int(size[1]))
        rows, cols = bicubic_weights(gh, size[0]), bicubic_weights(gw, size[1])
    else:
        size = jnp.asarray(size)
        rows = bicubic_weights(gh, size[0], canvas)
        cols = bicubic_weights(gw, size[1], canvas)
    hp = jax.lax.Precision.HIGHEST  # exact float32 products (TPU default is bf16 passes)
    return jnp.matmul(jnp.matmul(rows, heat, precision=hp), cols.T, precision=hp)
