"""Tests for iterprime_jax.method.select (proposal selection, docs/method.md section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iterprime_jax.method.select import (
    Selection,
    check_proposals,
    count_components,
    select_proposal,
    threshold_mask,
)

H, W = 6, 8


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def heat_with_peak(y, x, base=0.1):
    h = np.full((H, W), base, np.float32)
    h[y, x] = 1.0
    return h


def select(heat, props, valid=None, ncomp=None, max_components=12):
    props = np.asarray(props, bool)
    valid = np.ones(len(props), bool) if valid is None else np.asarray(valid, bool)
    ncomp = count_components(props) if ncomp is None else np.asarray(ncomp, np.int32)
    return select_proposal(heat, props, valid, ncomp, max_components=max_components)


# ---------------------------------------------------------------------------------------------


def test_count_components():
    diag = np.zeros((H, W), bool)
    diag[0, 0] = diag[1, 1] = diag[2, 2] = True  # diagonal neighbours: 3 under 4-connectivity
    two = box(0, 2, 0, 2) | box(4, 6, 5, 8)
    props = np.stack([np.zeros((H, W), bool), box(1, 3, 1, 4), two, diag])
    out = count_components(props)
    assert out.dtype == np.int32 and out.tolist() == [0, 1, 2, 3]
    assert count_components(np.zeros((0, H, W), bool)).shape == (0,)
    with pytest.raises(ValueError):
        count_components(np.zeros((H, W), bool))


def test_seed_rule_beats_score():
    heat = heat_with_peak(5, 7, base=0.0)
    heat[0:2, 0:2] = 0.99  # a very hot region that does not hold the maximum
    hot = box(0, 2, 0, 2)  # score ~1.99
    covering = box(3, 6, 4, 8)  # covers the peak, score lower
    sel = select(heat, [hot, covering])
    assert int(sel.index) == 1 and bool(sel.has_candidate)
    np.testing.assert_array_equal(np.asarray(sel.mask), covering)


def test_score_ordering():
    heat = np.zeros((H, W), np.float32)
    heat[2, 3] = 1.0
    heat[2:4, 2:5] += 0.5
    heat = heat / heat.max()  # peak 1 at (2, 3), 1/3 on the rest of rows 2-3, cols 2-4, else 0
    large = box(0, 6, 0, 8)  # (48 + 1 + 5/3) / 48 = 1.056 (sum/sqrt(area) would give 7.31)
    small = box(2, 4, 2, 5)  # (6 + 1 + 5/3) / 6 = 1.444 (sum/sqrt(area): 3.54)
    medium = box(1, 4, 2, 5)  # (9 + 1 + 5/3) / 9 = 1.296
    peak = box(2, 3, 3, 4)  # (1 + 1) / 1 = 2
    assert int(select(heat, [large, small, medium]).index) == 1
    assert int(select(heat, [large, medium]).index) == 1
    assert int(select(heat, [large, small, medium, peak]).index) == 3


def test_component_limit():
    heat = heat_with_peak(0, 0)
    fragmented = np.zeros((H, W), bool)
    fragmented[::2, ::2] = True  # 12 isolated pixels including the peak; high mean heat
    fragmented[0, 0] = True
    whole = box(0, 6, 0, 8)
    assert count_components(fragmented[None])[0] == 12
    assert int(select(heat, [fragmented, whole], max_components=12).index) == 0
    assert int(select(heat, [fragmented, whole], max_components=11).index) == 1
    # a given component count is used as is
    assert int(select(heat, [fragmented, whole], ncomp=[13, 1]).index) == 1


def test_no_candidate_empty():
    heat = heat_with_peak(5, 7)
    sel = select(heat, [box(0, 2, 0, 2), box(0, 3, 0, 3)])
    assert isinstance(sel, Selection)
    assert int(sel.index) == -1 and not bool(sel.has_candidate)
    assert np.asarray(sel.mask).shape == (H, W) and not np.asarray(sel.mask).any()
    # empty proposals never cover a seed
    sel = select(heat, np.zeros((3, H, W), bool))
    assert int(sel.index) == -1 and not np.asarray(sel.mask).any()
    # no proposals at all
    sel = select(heat, np.zeros((0, H, W), bool))
    assert int(sel.index) == -1 and not np.asarray(sel.mask).any()


def test_multiple_seeds():
    # two argmax pixels: covering either one makes a candidate
    heat = np.full((H, W), 0.2, np.float32)
    heat[0, 0] = heat[5, 7] = 1.0
    a = box(0, 1, 0, 1)  # covers seed (0,0): score 2
    b = box(4, 6, 6, 8)  # covers seed (5,7): lower mean
    c = box(2, 4, 2, 4)  # no seed
    sel = select(heat, [c, b, a])
    assert int(sel.index) == 2
    sel = select(heat, [c, b])
    assert int(sel.index) == 1


def test_ties_pick_first():
    heat = heat_with_peak(2, 2)
    p = box(1, 4, 1, 4)
    sel = select(heat, [box(0, 1, 7, 8), p, p.copy(), p.copy()])
    assert int(sel.index) == 1


def test_padded_invalid_ignored():
    heat = heat_with_peak(2, 2)
    best = box(2, 3, 2, 3)  # the peak pixel alone: the top score
    ok = box(1, 4, 1, 4)
    props = [ok, best, np.zeros((H, W), bool)]
    assert int(select(heat, props).index) == 1
    assert int(select(heat, props, valid=[True, False, False]).index) == 0
    sel = select(heat, props, valid=[False, False, False])
    assert int(sel.index) == -1 and not np.asarray(sel.mask).any()


def test_jit_compiles_once():
    traces = []

    def f(heat, props, valid, ncomp):
        traces.append(1)
        return select_proposal(heat, props, valid, ncomp, max_components=12)

    jf = jax.jit(f)
    rng = np.random.default_rng(0)
    n = 5
    for _ in range(4):
        heat = rng.random((H, W)).astype(np.float32)
        props = rng.random((n, H, W)) > 0.5
        valid = rng.random(n) > 0.2
        ncomp = count_components(props)
        got = jf(heat, props, valid, ncomp)
        want = select_proposal(heat, props, valid, ncomp)
        assert int(got.index) == int(want.index)
        np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
        assert got.index.dtype == jnp.int32 and got.mask.dtype == jnp.bool_
    assert len(traces) == 1


def test_vmap():
    heat = np.stack([heat_with_peak(0, 0), heat_with_peak(5, 7), heat_with_peak(3, 3)])
    props = np.stack([box(0, 3, 0, 3), box(3, 6, 4, 8), box(0, 6, 0, 8)])
    valid = np.ones(3, bool)
    ncomp = count_components(props)
    out = jax.vmap(select_proposal, in_axes=(0, None, None, None))(heat, props, valid, ncomp)
    assert np.asarray(out.index).tolist() == [0, 1, 2]


def test_threshold_mask():
    heat = jnp.asarray([[0.1, 0.5], [0.7, 0.49]])
    np.testing.assert_array_equal(np.asarray(threshold_mask(heat, 0.5)),
                                  [[False, True], [True, False]])


def test_check_proposals():
    props = check_proposals(np.ones((2, H, W), np.uint8), (H, W))
    assert props.dtype == bool and props.shape == (2, H, W)
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(6, 8\)"):
        check_proposals(np.ones((2, 4, 6), bool), (H, W))
    with pytest.raises(ValueError, match="ndim=2"):
        check_proposals(np.ones((H, W), bool), (H, W))
