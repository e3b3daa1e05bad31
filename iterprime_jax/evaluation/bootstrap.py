"""95% bootstrap intervals over sentences for the ablation table.

Every row of the ablation is evaluated on the same sentences, so rows are compared *paired*: one
resample of sentence indices is shared by all rows, which gives intervals for each row's mIoU /
oIoU and for the change a row brings over the row before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..metrics import Convention, overall_iou, per_sample_iou


def _stats(inter: np.ndarray, union: np.ndarray, idx: np.ndarray,
           convention: Convention = "standard") -> tuple[np.ndarray, np.ndarray]:
    """mIoU and oIoU, each (n_boot,), of the resamples `idx` (n_boot, n) of per-sentence I and
    U (int64), by `iterprime_jax.metrics` under `convention`."""
    miou = per_sample_iou(inter, union, convention)[idx].mean(1)
    return miou, overall_iou(inter[idx], union[idx])


def paired_bootstrap(rows: Mapping[str, tuple[Sequence[int], Sequence[int]]],
                     n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                     convention: Convention = "standard") -> dict[str, dict[str, float]]:
    """Percentile intervals for each row and for its difference to the previous row.

    Args:
      rows: {name: (I, U)} per sentence, in the same sentence order for every row, in table
        order.
      n_boot: resamples (sentence indices drawn with replacement, shared by all rows).
      convention: the metric convention of the IoU (`iterprime_jax.metrics`), as in the
        point values of the table.
    Returns:
      {name: {"mIoU_lo", "mIoU_hi", "oIoU_lo", "oIoU_hi"} and, from the second row on,
      {"d_mIoU", "d_mIoU_lo", "d_mIoU_hi"}: the change of mIoU over the previous row with its
      interval}; values in [0, 1] (differences in [-1, 1]).
    """
    names = list(rows)
    n = {len(rows[k][0]) for k in names}
    if len(n) != 1:
        raise ValueError(f"rows have different numbers of sentences: {sorted(n)}")
    count = n.pop()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, count, (n_boot, count))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, float]] = {}
    prev_point, prev_boot = None, None
    for name in names:
        inter = np.asarray(rows[name][0], np.int64)
        union = np.asarray(rows[name][1], np.int64)
        miou, oiou = _stats(inter, union, idx, convention)
        iou = per_sample_iou(inter, union, convention)
        r = {"mIoU_lo": float(np.percentile(miou, lo_q)),
             "mIoU_hi": float(np.percentile(miou, hi_q)),
             "oIoU_lo": float(np.percentile(oiou, lo_q)),
             "oIoU_hi": float(np.percentile(oiou, hi_q))}
        if prev_boot is not None:
            d = miou - prev_boot
            r.update({"d_mIoU": float(iou.mean() - prev_point),
                      "d_mIoU_lo": float(np.percentile(d, lo_q)),
                      "d_mIoU_hi": float(np.percentile(d, hi_q))})
        out[name] = r
        prev_point, prev_boot = float(iou.mean()), miou
    return out
