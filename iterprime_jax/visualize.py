"""Pictures of results: overlays (numpy only: heat map colouring, mask outlines) for the CLI,
and matplotlib figures for notebooks: `plot_passes` (one expression: every IGRS pass with its
P(match) and decision, the final heat map, the chosen proposal, the primary word highlighted)
and `plot_samples` (a gallery of evaluated samples, `iterprime_jax.evaluation.gallery`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, a jet-like colour map."""
    x = np.clip(heat, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured heat map onto the image and outline the mask in white."""
    out = (1 - alpha) * image.astype(np.float32) + alpha * colorize(heat).astype(np.float32)
    out = out.astype(np.uint8)
    if mask is not None and mask.any():
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 150))
        out[edge] = 255
    return out


# --------------------------------------------------------------------------- figures
# matplotlib is imported inside the functions below: it is not a runtime dependency of the
# library (`pip install iterprime-jax[notebook]` brings it).
PASS_ACCEPTED, PASS_REJECTED, PASS_NOT_RUN = "accepted", "rejected", "not run"


def pass_decisions(scores: np.ndarray, iterations: int) -> list[str]:
    """The IGRS decision of every pass from a result's `scores` (n,) (P(match) per pass, NaN
    after the stop) and `iterations` (accepted passes, >= 1): the first `iterations` passes
    were accepted (pass 0 always is), the next one, if it ran, was rejected (its P(match)
    fell), and the loop stopped there."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not 1 <= iterations <= scores.size:
        raise ValueError(f"iterations {iterations} is outside 1..{scores.size} (the passes)")
    out = []
    for i, p in enumerate(scores):
        if i < iterations:
            out.append(PASS_ACCEPTED)
        elif i == iterations and np.isfinite(p):
            out.append(PASS_REJECTED)
        else:
            out.append(PASS_NOT_RUN)
    return out


def score_summary(scores: np.ndarray, iterations: int) -> str:
    """P(match) of the passes that ran, the rejected one marked: "0.61, 0.68, 0.52 (rej.)"."""
    parts = []
    for p, d in zip(np.asarray(scores), pass_decisions(scores, iterations), strict=True):
        if d != PASS_NOT_RUN:
            parts.append(f"{p:.2f}" + (" (rej.)" if d == PASS_REJECTED else ""))
    return ", ".join(parts)


def _word_key(word: str) -> str:
    """Lower case, a possessive 's dropped, letters and digits only: "Dog's," -> "dog"."""
    w = word.lower().replace("\u2019", "'")
    for tail in ("'s", "'"):
        stripped = w.rstrip(".,;:!?\"")
        if stripped.endswith(tail) and len(stripped) > len(tail):
            w = stripped[: -len(tail)]
            break
    return "".join(ch for ch in w if ch.isalnum())


def highlight_spans(expression: str, primary_word: str | None) -> list[tuple[str, bool]]:
    """Split `expression` into (text, is_primary) runs: the words equal to the primary word
    (case, punctuation and a possessive 's ignored) are the highlighted runs; spaces are
    kept."""
    key = _word_key(primary_word) if primary_word else ""
    spans: list[tuple[str, bool]] = []
    for k, word in enumerate(expression.split(" ")):
        text = word if k == 0 else " " + word
        hit = bool(key) and _word_key(word) == key
        if hit and k > 0:
            spans.append((" ", False))
            text = word
        if spans and spans[-1][1] == hit:
            spans[-1] = (spans[-1][0] + text, hit)
        else:
            spans.append((text, hit))
    return spans


def draw_expression(fig: Any, expression: str, primary_word: str | None, x: float = 0.01,
                    y: float = 0.98, fontsize: float = 12) -> list[Any]:
    """Write `expression` at figure coordinates (x, y) (top left), the primary word in bold
    red on a yellow box. Returns the text artists, one per run."""
    from matplotlib.text import Annotation

    artists: list[Any] = []
    runs = highlight_spans(expression, primary_word)
    if not primary_word:
        runs.append(("   (no primary word)", False))
    for text, hit in runs:
        style: dict[str, Any] = {"fontsize": fontsize, "ha": "left"}
        if hit:
            style.update(color="red", fontweight="bold",
                         bbox={"boxstyle": "round,pad=0.1", "fc": "yellow", "ec": "none"})
        if not artists:
            t = fig.text(x, y, text, va="top", **style)
        else:  # chained: starts where the previous run ends, bottoms aligned
            t = Annotation(text, xy=(1, 0), xycoords=artists[-1], va="bottom", **style)
            fig.add_artist(t)
        artists.append(t)
    return artists


_DECISION_COLOUR = {PASS_ACCEPTED: "green", PASS_REJECTED: "red", PASS_NOT_RUN: "gray"}


def _show_heat(ax: Any, image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> None:
    """The image with `heat` ((H, W), or a patch grid resized to (H, W) with the pipeline's
    bicubic `resize_heatmap`) over it, colours clipped to [0, 1]."""
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        from .method.heat import resize_heatmap

        heat = np.asarray(resize_heatmap(heat, (h, w)))
    ax.imshow(image)
    ax.imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha, extent=(0, w, h, 0),
              interpolation="nearest")


def _show_mask(ax: Any, image: np.ndarray, mask: np.ndarray, colour: tuple[float, ...]) -> None:
    """The image, dimmed outside `mask` (H, W) bool, with the mask tinted and outlined."""
    out = image.astype(np.float32) / 255.0
    m = np.asarray(mask, bool)
    out[~m] *= 0.35
    out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour[:3], np.float32)
    if m.any():
        edge = m & ~ndimage.binary_erosion(m, iterations=max(1, min(m.shape) // 150))
        out[edge] = 1.0
    ax.imshow(np.clip(out, 0.0, 1.0))


def _new_figure(ncols: int, nrows: int = 1, panel: float = 2.6, top: float = 0.9) -> Any:
    from matplotlib.figure import Figure  # not pyplot: no global figure state

    fig = Figure(figsize=(panel * ncols, panel * nrows / top + 0.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def mask_caption(result: Any) -> str:
    """What the result's mask is: the chosen proposal, the thresholded heat map (no
    proposals, or no candidate with `empty_if_no_candidate=False`) or empty (no candidate)."""
    if result.proposal_index >= 0:
        return f"chosen proposal {result.proposal_index}"
    if result.mask.any():
        return "heat map >= threshold\n(no proposal chosen)"
    return "empty: no proposal covers\nthe heat-map peak"


def plot_passes(image: Any, result: Any, panel: float = 2.6) -> Any:
    """One expression's result as a matplotlib Figure (matplotlib.figure.Figure, not attached
    to pyplot: show it with IPython's `display(fig)` or save it with `fig.savefig`).

    Panels: the image; the heat map of every IGRS pass (its patch grid resized to the image as
    the pipeline does, `iterprime_jax.resize_heatmap`) over the image, titled with its
    P(match) and the decision (accepted / rejected / not run); the final heat map; the chosen
    proposal (or the thresholded heat map when there were no proposals or no candidate).
    The expression is written above, its primary word highlighted.

    image: (H, W, 3) uint8 (or (H, W)); result: an `iterprime_jax.SegmentResult` of it.
    """
    from .models.blip.preprocess import as_rgb_uint8

    rgb = as_rgb_uint8(image, "image")
    if rgb.shape[:2] != result.mask.shape:
        raise ValueError(f"image {rgb.shape[:2]} and result mask {result.mask.shape} differ: "
                         "pass the image the result was computed on")
    heats = np.asarray(result.heatmaps_per_iteration)
    n = heats.shape[0]
    decisions = pass_decisions(result.scores, result.iterations)
    fig, axes = _new_figure(n + 3, 1, panel)
    ax = axes[0]
    ax[0].imshow(rgb)
    ax[0].set_title("image", fontsize=9)
    for i in range(n):
        p, d = float(result.scores[i]), decisions[i]
        a = ax[1 + i]
        if d == PASS_NOT_RUN:
            a.imshow(rgb, alpha=0.25)
            a.set_title(f"pass {i}: not run", fontsize=9, color=_DECISION_COLOUR[d])
            continue
        _show_heat(a, rgb, heats[i])
        a.set_title(f"pass {i}: P(match) {p:.3f}\n{d}", fontsize=9,
                    color=_DECISION_COLOUR[d])
    _show_heat(ax[n + 1], rgb, result.heatmap)
    k = result.iterations
    ax[n + 1].set_title("final heat map\n" + ("(pass 0)" if k == 1 else f"(blend of {k} passes)"),
                        fontsize=9)
    what = mask_caption(result)
    _show_mask(ax[n + 2], rgb, result.mask, (0.1, 1.0, 0.2))
    ax[n + 2].set_title(what, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.05)
    draw_expression(fig, result.expression, result.primary_word, fontsize=12)
    return fig


def plot_samples(views: Any, panel: float = 2.6) -> Any:
    """A gallery of evaluated samples (`iterprime_jax.evaluation.gallery.SampleView`s), one
    row each: the image, the ground truth, the prediction (with its IoU and what it is) and
    the final heat map (with P(match) per pass), the expression above the row, primary word
    highlighted. Returns a matplotlib Figure (not attached to pyplot)."""
    views = list(views)
    if not views:
        raise ValueError("no samples to plot")
    fig, axes = _new_figure(4, len(views), panel, top=0.8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.5 / fig.get_figheight(),
                        wspace=0.05, hspace=0.4)
    for row, v in zip(axes, views, strict=True):
        res, rec = v.result, v.record
        row[0].imshow(v.image)
        row[0].set_title(f"image {rec['image_id']}, ref {rec['ref_id']}", fontsize=9)
        _show_mask(row[1], v.image, v.gt, (1.0, 0.8, 0.1))
        row[1].set_title("ground truth", fontsize=9)
        _show_mask(row[2], v.image, res.mask, (0.1, 1.0, 0.2))
        row[2].set_title(f"prediction: IoU {v.iou:.2f}\n{mask_caption(res)}", fontsize=9)
        _show_heat(row[3], v.image, res.heatmap)
        row[3].set_title(f"heat, {res.iterations} pass(es) accepted\nP(match) "
                         + score_summary(res.scores, res.iterations), fontsize=9)
        box = row[0].get_position()
        draw_expression(fig, res.expression, res.primary_word, x=box.x0,
                        y=box.y1 + 0.42 / fig.get_figheight(), fontsize=11)
    return fig
