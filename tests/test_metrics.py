"""Metrics against hand-computed values, both conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iterprime_jax.metrics import (
    format_table,
    intersection_union,
    overall_iou,
    per_sample_iou,
    summarize,
)


def test_intersection_union_small_masks():
    pred = np.zeros((4, 5), bool)
    gt = np.zeros((4, 5), bool)
    pred[0:2, 0:3] = True  # 6 px
    gt[1:3, 1:4] = True  # 6 px, overlap rows 1, cols 1..2 -> 2 px
    i, u = intersection_union(pred, gt)
    assert (i, u) == (2, 10)
    assert isinstance(i, int) and isinstance(u, int)
    assert intersection_union(pred.astype(np.uint8), gt.astype(np.uint8)) == (2, 10)


def test_intersection_union_empty_and_shape_mismatch():
    empty = np.zeros((3, 3), bool)
    gt = np.eye(3, dtype=bool)
    assert intersection_union(empty, gt) == (0, 3)  # empty prediction
    assert intersection_union(empty, empty) == (0, 0)  # empty union
    with pytest.raises(ValueError, match="shape"):
        intersection_union(np.zeros((3, 4), bool), gt)


# Samples: IoU 1.0, 0.6 (3/5), 0.5 (4/8), 0.0 (empty prediction), empty union (0/0).
INTER = np.array([10, 3, 4, 0, 0], np.int64)
UNION = np.array([10, 5, 8, 7, 0], np.int64)


def test_summarize_standard():
    m = summarize(INTER, UNION)
    assert m["n"] == 5
    assert m["oIoU"] == pytest.approx(17 / 30)
    assert m["mIoU"] == pytest.approx((1.0 + 0.6 + 0.5 + 0.0 + 0.0) / 5)
    # IoU >= X: 0.5 -> {1, .6, .5}; 0.6 -> {1, .6}; 0.7..0.9 -> {1}
    assert m["prec@0.5"] == pytest.approx(3 / 5)
    assert m["prec@0.6"] == pytest.approx(2 / 5)
    for x in ("0.7", "0.8", "0.9"):
        assert m[f"prec@{x}"] == pytest.approx(1 / 5)


def test_summarize_iterprime():
    m = summarize(INTER, UNION, convention="iterprime")
    iou = (INTER + 1e-6) / (UNION + 1e-6)
    assert iou[4] == pytest.approx(1.0)  # empty union counts as a hit
    assert m["mIoU"] == pytest.approx(iou.mean())
    assert m["oIoU"] == pytest.approx(17 / 30)
    # strict IoU > X: 0.5 -> {1, ~0.6, 1(empty)}; 0.5 itself is (4+e)/(8+e) > 0.5 by a hair
    assert iou[2] > 0.5
    assert m["prec@0.5"] == pytest.approx(4 / 5)
    assert iou[1] > 0.6  # (3+e)/(5+e) > 0.6 as well
    assert m["prec@0.6"] == pytest.approx(3 / 5)
    assert m["prec@0.9"] == pytest.approx(2 / 5)


def test_strict_vs_inclusive_threshold_exact_hit():
    # IoU exactly 0.5 with no epsilon: counted under >=, not under >.
    m_std = summarize([1], [2])
    assert m_std["prec@0.5"] == 1.0
    iou = per_sample_iou(np.array([1]), np.array([2]), "iterprime")
    assert iou[0] > 0.5  # epsilon pushes it above; strictness matters only without epsilon


def test_empty_prediction_counts_and_no_sample_dropped():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    # no candidate -> empty mask -> IoU 0, still a sample
    i, u = intersection_union(np.stack([np.zeros((4, 4), bool), gt]), np.stack([gt, gt]))
    assert i.tolist() == [0, 4] and u.tolist() == [4, 4] and i.dtype == np.int64
    m = summarize(i, u)
    assert m["n"] == 2 and m["mIoU"] == pytest.approx(0.5) and m["oIoU"] == pytest.approx(4 / 8)


def test_all_empty_unions():
    std = summarize([0, 0], [0, 0])
    assert std["oIoU"] == 0.0 and std["mIoU"] == 0.0 and std["prec@0.5"] == 0.0
    itp = summarize([0, 0], [0, 0], convention="iterprime")
    assert itp["mIoU"] == pytest.approx(1.0) and itp["prec@0.9"] == 1.0 and itp["oIoU"] == 0.0


def test_empty_split_and_bad_input():
    m = summarize(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert m["n"] == 0 and math.isnan(m["oIoU"]) and math.isnan(m["prec@0.5"])
    with pytest.raises(ValueError):
        summarize([3], [2])
    with pytest.raises(ValueError):
        summarize([1], [2], convention="nope")
    with pytest.raises(ValueError):
        per_sample_iou([1], [2], convention="nope")


def test_counts_beyond_int32():
    big = 3_000_000_000  # beyond int32
    m = summarize([big, 0], [big, big], convention="iterprime")
    assert m["oIoU"] == pytest.approx(0.5) and m["n"] == 2
    assert summarize([1], [4], convention="iterprime")["mIoU"] == pytest.approx(
        (1 + 1e-6) / (4 + 1e-6))
    assert overall_iou([big, 0], [big, big]) == pytest.approx(0.5)
    assert overall_iou([[1, 1], [0, 0]], [[2, 2], [0, 0]]).tolist() == [0.5, 0.0]


def test_format_table():
    table = format_table({"val": summarize(INTER, UNION), "testA": summarize([1], [2])})
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:4] == ["split", "oIoU", "mIoU", "prec@0.5"]
    assert lines[0].split()[-1] == "n"
    assert lines[2].split()[0] == "val" and lines[2].split()[1] == "56.67"
    assert lines[2].split()[-1] == "5"
    assert lines[3].split()[1:3] == ["50.00", "50.00"]
