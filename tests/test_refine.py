"""IGRS loop semantics on a synthetic step function (no model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.refine import igrs, stretch

GRID = (4, 4)


def np_stretch(x):
    """docs/method.md: sigmoid(20 (x - 0.5)) / its max over the map, in float64 numpy."""
    s = 1.0 / (1.0 + np.exp(-20.0 * (np.asarray(x, np.float64) - 0.5)))
    return s / s.max(axis=(-2, -1), keepdims=True)
BASE = jnp.asarray(np.random.default_rng(0).random((2, 4, 4)), jnp.float32)


def make_step(direction: jnp.ndarray):
    """P(match) = 0.5 + direction * (fraction of hidden patches) / 2; heat = BASE on visible
    patches (hidden ones 0), min-max normalised. direction (B,) +1 rises, -1 falls."""

    def step(keep):
        k = keep.reshape(-1, *GRID).astype(jnp.float32)
        hidden = 1.0 - k.mean(axis=(1, 2))
        h = BASE * k
        h = (h - h.min(axis=(1, 2), keepdims=True)) / (
            h.max(axis=(1, 2), keepdims=True) - h.min(axis=(1, 2), keepdims=True) + 1e-9)
        return h, 0.5 + direction * hidden / 2

    return step


def test_falling_score_stops_and_keeps_previous_map():
    cfg = IteRPrimEConfig(iterations=3)
    res = jax.jit(lambda: igrs(make_step(jnp.array([-1.0, -1.0])), 2, GRID, cfg))()
    h0, _ = make_step(jnp.array([-1.0, -1.0]))(jnp.ones((2, 16), jnp.int32))
    np.testing.assert_allclose(res.heat, h0, atol=1e-6)  # the rejected pass is not blended
    assert res.iterations.tolist() == [1, 1]
    assert res.first_pass.tolist() == [True, True]  # pass 0's map: stretched by the pipeline
    assert np.all(np.isfinite(res.scores[:, :2])) and np.all(np.isnan(res.scores[:, 2]))
    assert np.all(res.heats[:, 2] == 0)


def test_rising_score_accepts_all_passes_and_keep_mask_only_shrinks():
    cfg = IteRPrimEConfig(iterations=4, alpha=0.2)
    step = make_step(jnp.array([1.0, 1.0]))
    res = igrs(step, 2, GRID, cfg)
    assert res.iterations.tolist() == [4, 4]
    # recompute the trajectory by hand
    keep = np.ones((2, 4, 4), bool)
    running = None
    for i in range(4):
        h, _ = step(jnp.asarray(keep.reshape(2, -1).astype(np.int32)))
        h = np.asarray(h)
        running = h if i == 0 else 0.8 * running + 0.2 * h
        new_keep = keep & (np_stretch(h) < 0.5)
        assert np.all(new_keep <= keep)  # hidden patches stay hidden
        keep = new_keep
    np.testing.assert_allclose(res.heat, running, atol=1e-5)
    assert res.first_pass.tolist() == [False, False]
    np.testing.assert_array_equal(np.asarray(res.keep), keep)
    assert np.all(np.diff(np.asarray(res.scores), axis=1) >= 0)


def test_keep_rejected_blends_the_rejected_pass():
    cfg = IteRPrimEConfig(iterations=3, alpha=0.2, keep_rejected=True)
    step = make_step(jnp.array([-1.0, -1.0]))
    res = igrs(step, 2, GRID, cfg)
    h0, _ = step(jnp.ones((2, 16), jnp.int32))
    keep = np_stretch(h0) < 0.5
    h1, _ = step(jnp.asarray(keep.reshape(2, -1).astype(np.int32)))
    np.testing.assert_allclose(res.heat, 0.8 * np.asarray(h0) + 0.2 * np.asarray(h1), atol=1e-6)
    assert res.iterations.tolist() == [1, 1]
    assert res.first_pass.tolist() == [False, False]  # a blend: returned without stretch


def test_per_sample_stop_in_one_batch():
    res = igrs(make_step(jnp.array([1.0, -1.0])), 2, GRID, IteRPrimEConfig(iterations=3))
    assert res.iterations.tolist() == [3, 1]
    assert res.first_pass.tolist() == [False, True]
    assert np.isfinite(res.scores[0]).all() and np.isnan(res.scores[1, 2])


def test_equal_score_is_accepted_only_a_strict_drop_stops():
    """The authors stop when P(match) < previous (strict): an equal score is accepted."""
    def step(keep):
        k = keep.reshape(-1, *GRID).astype(jnp.float32)
        hidden = 1.0 - k.mean(axis=(1, 2))
        # sample 0: constant score; sample 1: lower by 1e-3 after anything is hidden
        return BASE * k, jnp.array([0.5, 0.5]) - jnp.array([0.0, 1e-3]) * (hidden > 0)

    res = igrs(step, 2, GRID, IteRPrimEConfig(iterations=3))
    assert res.iterations.tolist() == [3, 1]


def test_stretch_formula():
    x = jnp.asarray(np.random.default_rng(1).random((2, 3, 5)), jnp.float32)
    np.testing.assert_allclose(np.asarray(stretch(x)), np_stretch(x), atol=1e-6)


def test_single_pass_is_plain_gradcam():
    step = make_step(jnp.array([1.0, 1.0]))
    res = igrs(step, 2, GRID, IteRPrimEConfig(iterations=1))
    h0, p0 = step(jnp.ones((2, 16), jnp.int32))
    np.testing.assert_allclose(res.heat, h0)
    assert res.scores.shape == (2, 1) and res.iterations.tolist() == [1, 1]
    assert res.first_pass.tolist() == [True, True]
    with pytest.raises(ValueError, match="iterations"):
        igrs(step, 2, GRID, IteRPrimEConfig(iterations=0))
