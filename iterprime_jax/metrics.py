"""Referring-segmentation metrics: per-sample I/U, oIoU, mIoU, Prec@X: the one definition
used by the evaluator (its device-side I and U, `intersection_union` with jax.numpy; its
split metrics, `summarize`), the ablation's bootstrap intervals and the per-kind reports.
Pure numpy; `intersection_union` also runs traced with ``xp=jax.numpy``.

Every sentence is one sample; a sample whose prediction is empty (e.g. no proposal candidate)
still counts, with I = 0. Three conventions, chosen explicitly:

* ``"standard"`` (default; LAVT, Global-Local CLIP): IoU = I / U, and 0 when U == 0;
  Prec@X counts IoU >= X.
* ``"iterprime"`` (the IteRPrimE authors' evaluator): IoU = (I + 1e-6) / (U + 1e-6), so an empty
  union scores 1; Prec@X counts the strict IoU > X.
* ``"phrasecut"`` (the official PhraseCut evaluator, ``utils/evaluator.py``): IoU = I / U, and 0
  when I == 0 (hence also when U == 0); "pred_mask_acc" at X counts the strict IoU > X; mean
  and cumulative mask IoU are our mIoU and oIoU.

PhraseCut's official subsets (`phrasecut_subsets`) split the tasks by instance count, by the
ground truth's area relative to the image, and by whether the category is a COCO class.

In every convention, oIoU = sum(I) / sum(U) over the split (0 when sum(U) == 0). Values are
fractions in [0, 1]; :func:`format_table` prints them as percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Convention = Literal["standard", "iterprime", "phrasecut"]
CONVENTIONS: tuple[str, ...] = ("standard", "iterprime", "phrasecut")
THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
EPS = 1e-6


def intersection_union(pred: Any, gt: Any, xp: Any = np) -> tuple[Any, Any]:
    """Pixel counts of pred AND gt and pred OR gt over the last two axes: the one definition
    of a sample's I and U, on the host (numpy) and on the device (``xp=jax.numpy``, traced
    under `jax.jit` / `jax.vmap`: the evaluator's step, `evaluation.device`).

    Args:
      pred: (..., H, W) mask, bool or {0, 1}.
      gt: same shape.
      xp: the array module, numpy (default) or jax.numpy.
    Returns:
      (I, U): python ints for one (H, W) pair on the host; arrays of shape (...) otherwise
      (int64 with numpy, int32 with jax.numpy).
    """
    pred, gt = xp.asarray(pred).astype(bool), xp.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    dtype = np.int64 if xp is np else xp.int32
    inter = xp.sum(pred & gt, axis=(-2, -1), dtype=dtype)
    union = xp.sum(pred | gt, axis=(-2, -1), dtype=dtype)
    if xp is np and pred.ndim == 2:
        return int(inter), int(union)
    return inter, union


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def per_sample_iou(
    intersection: np.ndarray, union: np.ndarray, convention: Convention = "standard"
) -> np.ndarray:
    """IoU of each sample.

    Args:
      intersection, union: (N,) integer counts.
    Returns:
      (N,) float64 IoU under ``convention``.
    """
    _check_convention(convention)
    i = np.asarray(intersection, np.float64)
    u = np.asarray(union, np.float64)
    if convention == "iterprime":
        return (i + EPS) / (u + EPS)
    if convention == "phrasecut":
        return np.divide(i, u, out=np.zeros_like(i), where=i > 0)
    return np.divide(i, u, out=np.zeros_like(i), where=u > 0)


def overall_iou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray | float:
    """oIoU = sum(I) / sum(U) over the last axis (0 where sum(U) == 0), the same under every
    convention.

    Args:
      intersection, union: (..., N) integer counts (summed as int64).
    Returns:
      (...) float64 (a python float for (N,) inputs).
    """
    i = np.asarray(intersection, np.int64).sum(-1)
    u = np.asarray(union, np.int64).sum(-1)
    out = np.divide(i, u, out=np.zeros(np.shape(u), np.float64), where=u > 0)
    return float(out) if out.ndim == 0 else out


def precision_at(iou: np.ndarray, x: float, convention: Convention = "standard") -> np.ndarray:
    """Whether each sample counts for Prec@X: IoU >= X under "standard", the strict IoU > X
    under "iterprime" and "phrasecut". iou: (..., N) -> (..., N) bool."""
    _check_convention(convention)
    return iou >= x if convention == "standard" else iou > x


def summarize(
    intersection: np.ndarray,
    union: np.ndarray,
    convention: Convention = "standard",
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, float | int]:
    """Split-level metrics from per-sample counts.

    Args:
      intersection, union: (N,) integer counts, one per sample (accumulated as int64).
      convention: one of `CONVENTIONS` (see the module docstring).
      thresholds: IoU thresholds X of the Prec@X entries.
    Returns:
      {"oIoU", "mIoU", "prec@0.5", ..., "prec@0.9": float in [0, 1], "n": int}; the float
      entries are NaN when n == 0.
    """
    i = np.asarray(intersection, np.int64).reshape(-1)
    u = np.asarray(union, np.int64).reshape(-1)
    if i.shape != u.shape:
        raise ValueError(f"intersection shape {i.shape} != union shape {u.shape}")
    if np.any(i > u) or np.any(i < 0):
        raise ValueError("need 0 <= I <= U for every sample")
    iou = per_sample_iou(i, u, convention)
    n = int(iou.size)
    out: dict[str, float | int] = {}
    if n == 0:
        out["oIoU"] = out["mIoU"] = float("nan")
    else:
        out["oIoU"] = overall_iou(i, u)
        out["mIoU"] = float(iou.mean())
    for x in thresholds:
        out[f"prec@{x:g}"] = float(precision_at(iou, x, convention).mean()) if n else float("nan")
    out["n"] = n
    return out


# The 80 COCO category names, as listed in PhraseCut's utils/subset.py (subset "c_coco") and
# Global-Local CLIP's PhraseCut loader (its "unseen" mode drops these categories).
COCO_CLASSES: frozenset[str] = frozenset((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
))
# Official subsets we reproduce (names as in PhraseCut's utils/subset.py) plus "c_notcoco",
# the complement of c_coco (ours), in the order they are reported.
PHRASECUT_SUBSETS: tuple[str, ...] = (
    "all", "c_coco", "c_notcoco", "i_single", "i_multi", "i_many", "s_small", "s_mid", "s_large")
SMALL_FRACTION, LARGE_FRACTION = 0.02, 0.2


def is_coco_category(name: str) -> bool:
    """Whether a PhraseCut category name (``phrase_structure["name"]``) is a COCO class."""
    return name in COCO_CLASSES


def phrasecut_subsets(name: str, num_instances: int, gt_pixels: int, image_pixels: int
                      ) -> tuple[str, ...]:
    """The `PHRASECUT_SUBSETS` a task belongs to (official rules, utils/subset.py):

    * ``c_coco``: the category name is one of the 80 COCO classes; ``c_notcoco`` otherwise;
    * ``i_single``: 1 instance; ``i_multi``: 2 to 4; ``i_many``: 5 or more;
    * ``s_small``: ground truth < 2% of the image; ``s_large``: > 20%; ``s_mid``: the rest
      (the ground-truth area is that of the official polygon rasterisation).
    """
    out = ["all", "c_coco" if is_coco_category(name) else "c_notcoco"]
    if num_instances == 1:
        out.append("i_single")
    elif 1 < num_instances < 5:
        out.append("i_multi")
    elif num_instances >= 5:
        out.append("i_many")
    relative = gt_pixels * 1.0 / image_pixels
    if relative < SMALL_FRACTION:
        out.append("s_small")
    elif relative > LARGE_FRACTION:
        out.append("s_large")
    else:
        out.append("s_mid")
    return tuple(out)


def summarize_subsets(
    intersection: np.ndarray,
    union: np.ndarray,
    subsets: Sequence[Sequence[str]],
    convention: Convention = "phrasecut",
    order: Sequence[str] = PHRASECUT_SUBSETS,
) -> dict[str, dict[str, float | int]]:
    """`summarize` per subset: ``{subset: {...}}`` for every subset of `order` with a sample.

    Args:
      intersection, union: (N,) integer counts.
      subsets: per sample, the names of the subsets it belongs to.
    """
    i = np.asarray(intersection, np.int64).reshape(-1)
    u = np.asarray(union, np.int64).reshape(-1)
    if len(subsets) != i.size:
        raise ValueError(f"{len(subsets)} subset lists for {i.size} samples")
    out: dict[str, dict[str, float | int]] = {}
    for name in order:
        keep = np.asarray([name in s for s in subsets], bool)
        if keep.any():
            out[name] = summarize(i[keep], u[keep], convention)
    return out


def format_table(metrics_by_split: Mapping[str, Mapping[str, float | int]], digits: int = 2) -> str:
    """A fixed-width text table, one row per split; float metrics printed as percentages.

    Args:
      metrics_by_split: {split: summarize(...) output}.
      digits: decimals of the percentages.
    """
    columns: list[str] = []
    for m in metrics_by_split.values():
        columns += [k for k in m if k not in columns]
    header = ["split", *columns]
    rows = [header]
    for split, m in metrics_by_split.items():
        cells = [str(split)]
        for k in columns:
            v = m.get(k)
            if v is None:
                cells.append("-")
            elif isinstance(v, (int, np.integer)):
                cells.append(str(int(v)))
            else:
                cells.append(f"{100.0 * float(v):.{digits}f}")
        rows.append(cells)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
