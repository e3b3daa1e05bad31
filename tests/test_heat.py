"""Tests for iterprime_jax.method.heat: the masked PWE formula against an index-list reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iterprime_jax.method.heat import heat_map, minmax_normalize, plain_heat, pwe_heat

HEADS, T, GH, GW = 3, 12, 5, 4


# ---------------------------------------------------------------------------------------------
# Reference: docs/method.md section 2 written with index lists, in float64 numpy.


def _minmax(x):
    x = x - x.min()
    return x / x.max() if x.max() > 0 else x


def ref_pwe(attn, grad, valid, focus_ids, primary_ids, no_primary="authors"):
    attn = np.asarray(attn, np.float64)
    grad = np.asarray(grad, np.float64)
    v = np.asarray(valid, np.float64)[None, :, None, None]
    cam = attn * v
    g = np.maximum(grad, 0) * v
    focus_ids = list(focus_ids)
    primary_ids = list(primary_ids)
    if primary_ids:
        M = primary_ids
        O = [t for t in focus_ids if t not in M]  # noqa: E741 (docs/method.md notation)
        F = focus_ids + M * len(focus_ids)
        mg = g[:, M].mean(1, keepdims=True)
        mc = cam[:, M].mean(1, keepdims=True)
        mm = mg * mc
        maps = [(g[:, 0] * cam[:, 0])[:, None]]
        if O:
            D = mc - cam[:, O]
            norm = np.sqrt((D**2).sum(1, keepdims=True))
            norm = np.where(norm == 0, 1e-8, norm)
            maps.append(D / norm * mg * mm)
        maps.append(g[:, F] * cam[:, F])
        per_head = np.concatenate(maps, axis=1).mean(1)
        return _minmax(per_head.mean(0))
    # no primary word: per token (head-mean grad) * (head-mean cam), mean over the tokens S
    if no_primary == "authors":  # their condition, as written
        S = [t for t in range(attn.shape[1]) if valid[t]] if focus_ids else [0]
    else:
        S = [0] + focus_ids
    return _minmax((g.mean(0)[S] * cam.mean(0)[S]).mean(0))


def ref_plain(attn, grad, valid):
    S = [t for t in range(attn.shape[1]) if valid[t]]
    g = np.maximum(np.asarray(grad, np.float64), 0)[:, S]
    cam = np.asarray(attn, np.float64)[:, S]
    return _minmax((g * cam).mean(1).mean(0))


def _masks(n_valid, focus_ids, primary_ids):
    valid = np.zeros(T, np.int32)
    valid[:n_valid] = 1
    focus = np.zeros(T, bool)
    focus[list(focus_ids)] = True
    primary = np.zeros(T, bool)
    primary[list(primary_ids)] = True
    return valid, focus, primary


def _inputs(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(HEADS, T, GH * GW + 1))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    attn = attn[..., 1:].reshape(HEADS, T, GH, GW).astype(np.float32)  # image CLS dropped
    grad = (rng.normal(size=(HEADS, T, GH, GW)) * 0.1).astype(np.float32)
    # padding positions carry garbage that must be ignored
    return attn, grad


# (n_valid, focus ids, primary ids); [CLS] at 0, template prefix 1..3, [SEP] at n_valid-1
CASES = {
    "primary": (10, [4, 6, 7, 8], [4]),
    "primary_multi_piece": (11, [4, 5, 6, 8, 9], [4, 5, 6]),
    "primary_only_focus": (7, [4, 5], [4, 5]),  # O empty
    "no_primary": (9, [5, 7], []),
    "no_focus": (8, [], []),
    "full_length": (T, [4, 9, 10], [9, 10]),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pwe_matches_reference(case, seed):
    n_valid, focus_ids, primary_ids = CASES[case]
    attn, grad = _inputs(seed)
    valid, focus, primary = _masks(n_valid, focus_ids, primary_ids)
    got = np.asarray(pwe_heat(attn, grad, valid, focus, primary))
    want = ref_pwe(attn, grad, valid, focus_ids, primary_ids)
    assert got.shape == (GH, GW) and got.dtype == np.float32
    assert got.min() == 0.0 and np.isclose(got.max(), 1.0)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["no_primary", "no_focus", "primary"])
def test_no_primary_focus_option_matches_reference(case):
    n_valid, focus_ids, primary_ids = CASES[case]
    attn, grad = _inputs(5)
    valid, focus, primary = _masks(n_valid, focus_ids, primary_ids)
    got = np.asarray(pwe_heat(attn, grad, valid, focus, primary, no_primary="focus"))
    np.testing.assert_allclose(got, ref_pwe(attn, grad, valid, focus_ids, primary_ids, "focus"),
                               atol=1e-6, rtol=0)


def _hand_case():
    """2 heads, 5 tokens ([CLS], focus word, other word, [SEP], padding), a 1x3 grid.

    Per token, (head-mean relu(grad)) * (head-mean cam), per pixel:
      [CLS]: grad heads [3,0,0] and [0,0,0] -> [1.5,0,0]; cam [1,1,1] both -> [1.5, 0, 0]
      focus: grad [0,2,0] and 0 -> [0,1,0];    cam [0,2,0] and 0 -> [0,1,0]: [0, 1, 0]
             (the head-mean of the products would be [0, 2, 0])
      other: grad [0,0,3] both -> [0,0,3];     cam [0,0,1] both: [0, 0, 3]
      [SEP]: grad -5 everywhere (relu -> 0):   [0, 0, 0]
      padding: 9 everywhere, ignored.
    """
    grad = np.zeros((2, 5, 1, 3), np.float32)
    cam = np.zeros((2, 5, 1, 3), np.float32)
    grad[0, 0, 0, 0] = 3
    cam[:, 0] = 1
    grad[0, 1, 0, 1] = 2
    cam[0, 1, 0, 1] = 2
    grad[:, 2, 0, 2] = 3
    cam[:, 2, 0, 2] = 1
    grad[:, 3] = -5
    cam[:, 3] = 1
    grad[:, 4] = cam[:, 4] = 9
    valid = np.array([1, 1, 1, 1, 0])
    return cam, grad, valid


def test_no_primary_word_hand_computed():
    cam, grad, valid = _hand_case()
    focus = np.array([0, 1, 0, 0, 0], bool)
    none = np.zeros(5, bool)

    def heat(f, mode):
        return np.asarray(pwe_heat(cam, grad, valid, f, none, no_primary=mode))

    # authors, with focus words: mean over the 4 real tokens = [1.5, 1, 3] / 4
    #   -> min-max (x - 1/4) / (3/4 - 1/4) = [0.25, 0, 1]
    np.testing.assert_allclose(heat(focus, "authors"), [[0.25, 0.0, 1.0]], atol=1e-6)
    # authors, no focus word: [CLS] alone = [1.5, 0, 0] -> [1, 0, 0]
    np.testing.assert_allclose(heat(none, "authors"), [[1.0, 0.0, 0.0]], atol=1e-6)
    # intent: focus + [CLS] = [1.5, 1, 0] / 2 -> [1, 2/3, 0]
    np.testing.assert_allclose(heat(focus, "focus"), [[1.0, 2 / 3, 0.0]], atol=1e-6)
    np.testing.assert_allclose(heat(none, "focus"), [[1.0, 0.0, 0.0]], atol=1e-6)
    # the default of the pipeline's config is the authors' branch
    from iterprime_jax.config import IteRPrimEConfig
    assert IteRPrimEConfig().no_primary_tokens == "authors"
    np.testing.assert_array_equal(np.asarray(pwe_heat(cam, grad, valid, focus, none)),
                                  heat(focus, "authors"))
    with pytest.raises(ValueError, match="no_primary_tokens"):
        IteRPrimEConfig(no_primary_tokens="cls")


@pytest.mark.parametrize("seed", [0, 1])
def test_plain_matches_reference(seed):
    attn, grad = _inputs(seed)
    valid, focus, primary = _masks(9, [4, 6], [4])
    got = np.asarray(plain_heat(attn, grad, valid))
    np.testing.assert_allclose(got, ref_plain(attn, grad, valid), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got, np.asarray(heat_map(attn, grad, valid, focus, primary,
                                                           use_pwe=False)))
    np.testing.assert_array_equal(
        np.asarray(heat_map(attn, grad, valid, focus, primary, use_pwe=True)),
        np.asarray(pwe_heat(attn, grad, valid, focus, primary)))


def test_padding_ignored():
    attn, grad = _inputs(3)
    valid, focus, primary = _masks(9, [4, 6], [4])
    # masks set on padding positions and garbage values there change nothing
    focus2, primary2 = focus.copy(), primary.copy()
    focus2[10] = primary2[11] = True
    attn2, grad2 = attn.copy(), grad.copy()
    attn2[:, 9:] = 5.0
    grad2[:, 9:] = 7.0
    a = np.asarray(pwe_heat(attn, grad, valid, focus, primary))
    b = np.asarray(pwe_heat(attn2, grad2, valid, focus2, primary2))
    np.testing.assert_allclose(a, b, atol=1e-7)
    np.testing.assert_allclose(np.asarray(plain_heat(attn, grad, valid)),
                               np.asarray(plain_heat(attn2, grad2, valid)), atol=1e-7)


def test_float_masks_and_relu():
    attn, grad = _inputs(4)
    valid, focus, primary = _masks(10, [4, 6, 7], [6])
    a = pwe_heat(attn, grad, valid, focus, primary)
    b = pwe_heat(attn, grad, valid.astype(np.float32), focus.astype(np.float32),
                 primary.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # negative gradients are clipped: making them more negative changes nothing
    grad2 = np.where(grad < 0, grad * 10, grad)
    np.testing.assert_allclose(np.asarray(pwe_heat(attn, grad2, valid, focus, primary)),
                               np.asarray(a), atol=1e-7)


def test_zero_range_guard():
    attn = np.zeros((HEADS, T, GH, GW), np.float32)
    grad = np.zeros((HEADS, T, GH, GW), np.float32)
    for case in CASES.values():
        valid, focus, primary = _masks(*case)
        out = np.asarray(pwe_heat(attn, grad, valid, focus, primary))
        assert np.isfinite(out).all() and (out == 0).all()
    assert (np.asarray(plain_heat(attn, grad, valid)) == 0).all()
    np.testing.assert_array_equal(np.asarray(minmax_normalize(jnp.full((2, 2), 3.0))),
                                  np.zeros((2, 2)))


def test_jit_and_vmap():
    names = sorted(CASES)
    attn = np.stack([_inputs(i)[0] for i in range(len(names))])
    grad = np.stack([_inputs(i)[1] for i in range(len(names))])
    masks = [_masks(*CASES[n]) for n in names]
    valid = np.stack([m[0] for m in masks])
    focus = np.stack([m[1] for m in masks])
    primary = np.stack([m[2] for m in masks])

    f = jax.jit(jax.vmap(pwe_heat))
    out = np.asarray(f(attn, grad, valid, focus, primary))
    assert out.shape == (len(names), GH, GW)
    for i, n in enumerate(names):
        _, focus_ids, primary_ids = CASES[n]
        want = ref_pwe(attn[i], grad[i], valid[i], focus_ids, primary_ids)
        np.testing.assert_allclose(out[i], want, atol=1e-6, rtol=0)

    g = jax.jit(heat_map, static_argnames="use_pwe")
    for use_pwe in (True, False):
        got = np.asarray(g(attn[0], grad[0], valid[0], focus[0], primary[0], use_pwe=use_pwe))
        want = (ref_pwe(attn[0], grad[0], valid[0], *CASES[names[0]][1:]) if use_pwe
                else ref_plain(attn[0], grad[0], valid[0]))
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_no_primary_tokens_flag():
    import argparse

    from iterprime_jax.cli_args import add_method_args, method_overrides

    ap = argparse.ArgumentParser()
    add_method_args(ap)
    args = ap.parse_args(["--no-primary-tokens", "focus"])
    assert method_overrides(args) == {"no_primary_tokens": "focus"}
    assert "evident intent" in ap.format_help()
    with pytest.raises(SystemExit):
        ap.parse_args(["--no-primary-tokens", "cls"])
