"""`authors_code` (the switch the converted ALBEF method.json sets): each branch against the
PyTorch transcription of the authors' code (bench/albef_reference.py), and the whole ALBEF
Grad-CAM + PWE + IGRS heat map against the authors' way (full forward + backward per sentence
per pass on tests/albef_ref.py's transformers-module model)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import BertTokenizer

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.heat import heat_map
from iterprime_jax.method.language import encode_batch, load_spacy
from iterprime_jax.method.pipeline import TextArrays, text_heatmaps
from iterprime_jax.method.refine import igrs
from iterprime_jax.models.albef.convert import convert_albef_state_dict
from iterprime_jax.models.blip.modeling import encode_image
from tests.albef_ref import Sizes, TorchAlbef, random_albef_state_dict
from tests.conftest import VOCAB  # bert-base-uncased (the real vocabulary)
from tests.test_albef import text_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from albef_reference import AlbefAuthors, igrs_authors, pwe_heat_authors  # noqa: E402
from torch_reference import pwe_heat as pwe_heat_method  # noqa: E402

GRID = (4, 5)
H, T = 3, 9


def _cam(seed: int):
    rng = np.random.default_rng(seed)
    cam = rng.dirichlet(np.ones(GRID[0] * GRID[1] + 1), size=(H, T))[..., 1:].astype(np.float32)
    grad = rng.normal(size=(H, T, GRID[0] * GRID[1])).astype(np.float32)
    return cam, grad


def _ours(cam, grad, n_valid, focus_ids, primary_ids, authors_code):
    v = np.zeros(T, np.int32)
    v[:n_valid] = 1
    f = np.zeros(T, bool)
    f[focus_ids] = True
    p = np.zeros(T, bool)
    p[primary_ids] = True
    shape = (H, T, *GRID)
    return np.asarray(heat_map(cam.reshape(shape), grad.reshape(shape), v, f, p,
                               authors_code=authors_code))


# (n_valid, focus ids (primary included), primary ids)
CASES = {"primary_only_focus": (8, [4], [4]), "primary_two_pieces_only": (8, [4, 5], [4, 5]),
         "primary_and_others": (8, [2, 4, 6], [4]), "no_primary_with_focus": (7, [2, 5], []),
         "no_primary_no_focus": (6, [], [])}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_pwe_authors_code_matches_transcription(case, seed):
    n, focus, primary = CASES[case]
    cam, grad = _cam(seed)
    want = pwe_heat_authors(cam, grad, focus, primary, n, GRID)
    got = _ours(cam, grad, n, focus, primary, authors_code=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    method = pwe_heat_method(cam, grad, focus, primary, n, GRID)  # the specified method
    plain = _ours(cam, grad, n, focus, primary, authors_code=False)
    np.testing.assert_allclose(plain, method, atol=1e-5, rtol=0)
    others = [t for t in focus if t not in primary]
    if primary and not others:  # the one branch where the authors' code departs
        assert np.abs(got - plain).max() > 1e-3
    else:
        np.testing.assert_allclose(got, plain, atol=1e-6, rtol=0)


def test_authors_code_switch_settings():
    c = IteRPrimEConfig(authors_code=True)
    assert c.keep_rejected and c.no_primary_tokens == "authors"
    assert not IteRPrimEConfig().keep_rejected
    with pytest.raises(ValueError, match="no_primary_tokens='focus'"):
        IteRPrimEConfig(authors_code=True, no_primary_tokens="focus")


def _toy_step(seed: int, batch: int):
    """A deterministic Grad-CAM stand-in: heat and P(match) are fixed functions of keep."""
    rng = np.random.default_rng(seed)
    n = GRID[0] * GRID[1]
    w = rng.normal(size=(batch, n, n)).astype(np.float32)
    b = rng.normal(size=(batch, n)).astype(np.float32)
    u = rng.normal(size=(batch, n)).astype(np.float32)

    def heat_np(i, keep):
        z = w[i] @ keep.astype(np.float32) / 4 + b[i]
        x = 1 / (1 + np.exp(-z))
        x = (x - x.min()) / (x.max() - x.min())
        return x.reshape(GRID).astype(np.float32), float(1 / (1 + np.exp(-(u[i] @ keep) / 4)))

    def step(keep):
        z = jnp.einsum("bij,bj->bi", w, keep.astype(jnp.float32)) / 4 + b
        x = jax.nn.sigmoid(z)
        lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
        x = (x - lo) / (hi - lo)
        p = jax.nn.sigmoid(jnp.einsum("bj,bj->b", u, keep.astype(jnp.float32)) / 4)
        return x.reshape(-1, *GRID), p

    return step, heat_np


def test_igrs_authors_code_matches_transcription():
    batch = 12
    step, heat_np = _toy_step(3, batch)
    cfg = IteRPrimEConfig(authors_code=True, iterations=4)
    got = igrs(step, batch, GRID, cfg)
    plain = igrs(step, batch, GRID, IteRPrimEConfig(iterations=4))
    n_rejected = 0
    for i in range(batch):
        ref = igrs_authors(lambda k, i=i: heat_np(i, np.ones(GRID[0] * GRID[1], np.int32)
                                                   if k is None else k), GRID, 4, 0.2)
        assert int(got.iterations[i]) == ref.iterations
        assert bool(got.first_pass[i]) == ref.first_pass
        np.testing.assert_allclose(np.asarray(got.heat[i]), ref.heat, atol=1e-5, rtol=0)
        if ref.passes > ref.iterations:  # a rejected pass: blended in (authors), not (default)
            n_rejected += 1
            assert np.abs(np.asarray(got.heat[i]) - np.asarray(plain.heat[i])).max() > 1e-4
    assert 0 < n_rejected < batch  # both branches exercised


def test_albef_heat_maps_match_the_authors_way():
    """Tiny ALBEF: our batched, jitted text_heatmaps with authors_code against the authors'
    per-sentence full forward + backward (transformers modules), sentence by sentence."""
    s = Sizes(max_pos=48)
    sd = random_albef_state_dict(s, seed=11, extras=False)
    config, params = convert_albef_state_dict(sd, "synthetic", text_config(s), s.image, s.patch,
                                              s.v_width, s.v_depth, s.v_heads)
    layer = s.t_layers - 2
    mcfg = IteRPrimEConfig(layer=layer, append_sep=False, authors_code=True)
    tok = BertTokenizer(str(VOCAB), do_lower_case=True)
    sentences = ["the man in a red shirt next to the car", "dog", "people on the left",
                 "the tall woman behind the bench", "left", "zebra eating grass"]
    batch = encode_batch(tok, load_spacy(), sentences, mcfg)
    pix = np.random.default_rng(2).normal(size=(s.image, s.image, 3)).astype(np.float32)
    emb = encode_image(params, config, jnp.asarray(pix[None]))
    res = text_heatmaps(params, config, mcfg, emb, TextArrays(
        jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
        jnp.asarray(batch.focus), jnp.asarray(batch.primary)))
    ref = AlbefAuthors(TorchAlbef(s, sd), layer=layer)
    assert 102 not in batch.input_ids.tolist()[0]
    for i, item in enumerate(batch.items):
        n = item.length
        r = ref.heat(pix, batch.input_ids[i, :n], np.flatnonzero(batch.focus[i, :n]).tolist(),
                     np.flatnonzero(batch.primary[i, :n]).tolist())
        assert int(res.iterations[i]) == r.iterations, item.prompt
        assert bool(res.first_pass[i]) == r.first_pass
        np.testing.assert_allclose(np.asarray(res.heat[i]), r.heat, atol=1e-4, rtol=0)
