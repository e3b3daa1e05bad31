"""Numerical parity of the Flax BLIP ITM port with HF PyTorch, through the converter."""

from __future__ import annotations

import numpy as np
import pytest

import iterprime_jax as ij
from iterprime_jax.models.blip.modeling import encode_image, match_from_embeds
from iterprime_jax.models.conversion import convert_hf_checkpoint

from .torch_ref import build_model, hf_config, run_torch, save_model

# (hf kwargs, our image (H, W)) — includes a non-square grid and odd head counts.
CONFIGS = {
    "square": (dict(), (32, 32)),
    "nonsquare_oddheads": (dict(image_size=16, patch_size=4, v_hidden=40, v_heads=5,
                                t_hidden=45, t_heads=5, t_layers=2), (8, 32)),
    "deeper_text": (dict(image_size=24, patch_size=8, v_hidden=36, v_heads=3, v_layers=3,
                         t_hidden=32, t_heads=1, t_layers=4), (24, 24)),
}


def _inputs(rng: np.random.Generator, hw: tuple[int, int], grid: int, vocab: int, b: int = 3,
            t: int = 7):
    pix = rng.normal(size=(b, *hw, 3)).astype(np.float32)
    ids = rng.integers(1, vocab, size=(b, t)).astype(np.int32)
    am = np.ones((b, t), np.int32)
    am[1, 5:] = 0  # padding
    am[2, 3:] = 0
    ids[am == 0] = 0
    img_mask = (rng.random((b, grid)) > 0.4).astype(np.int32)
    return pix, ids, am, img_mask


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory):
    kw, hw = CONFIGS[request.param]
    hf = hf_config(**kw)
    model = build_model(hf, seed=len(request.param))
    src = save_model(model, tmp_path_factory.mktemp("hf"))
    overrides = None if hw[0] == hw[1] else {"image_size": hw}
    dst = convert_hf_checkpoint(src, tmp_path_factory.mktemp("flax") / "ckpt", overrides)
    return model, hf, hw, ij.load(dst) if (dst / "vocab.txt").exists() else _load_no_tok(dst)


def _load_no_tok(dst):
    from iterprime_jax.models.convert import restore_params
    cfg = ij.BlipConfig.load(dst / "blip_config.json")
    return ij.Model(config=cfg, params=restore_params(dst, cfg), tokenizer=None, path=dst)


@pytest.mark.parametrize("masked", [False, True])
def test_logits_embeds_and_cross_attention_match_torch(converted, masked):
    model, hf, hw, flax_model = converted
    cfg = flax_model.config
    gh, gw = cfg.vision.grid
    rng = np.random.default_rng(0)
    pix, ids, am, img_mask = _inputs(rng, hw, gh * gw, hf.text_config.vocab_size)
    img_mask = img_mask if masked else None
    ref = run_torch(model, pix, ids, am, img_mask)

    emb = np.asarray(encode_image(flax_model.params, cfg, pix))
    logits, cross = match_from_embeds(flax_model.params, cfg, emb, ids, am, img_mask)
    assert np.abs(ref["logits"]).max() > 0.1  # a real signal, not ~0
    np.testing.assert_allclose(emb, ref["image_embeds"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)
    assert len(cross) == len(ref["cross"]) == hf.text_config.num_hidden_layers
    for ours, theirs in zip(cross, ref["cross"], strict=True):
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
    if masked:  # hidden patches get no attention at all
        hidden = np.concatenate([np.zeros((3, 1)), 1 - img_mask], axis=1).astype(bool)
        assert np.all(np.asarray(cross[0])[hidden[:, None, None, :].repeat(
            cross[0].shape[1], 1).repeat(cross[0].shape[2], 2)] == 0)


def test_mask_changes_the_output(converted):
    """Guards against a silently ignored image_mask (the transformers 5 trap)."""
    model, hf, hw, flax_model = converted
    cfg = flax_model.config
    gh, gw = cfg.vision.grid
    pix, ids, am, img_mask = _inputs(np.random.default_rng(1), hw, gh * gw,
                                     hf.text_config.vocab_size)
    a = ij.itm_logits(flax_model.params, cfg, pix, ids, am, None)
    b = ij.itm_logits(flax_model.params, cfg, pix, ids, am, img_mask)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_jit_with_static_config(converted):
    import jax
    _, hf, hw, flax_model = converted
    cfg = flax_model.config
    gh, gw = cfg.vision.grid
    pix, ids, am, _ = _inputs(np.random.default_rng(2), hw, gh * gw, hf.text_config.vocab_size)
    f = jax.jit(ij.itm_logits, static_argnums=1)
    np.testing.assert_allclose(np.asarray(f(flax_model.params, cfg, pix, ids, am)),
                               np.asarray(ij.itm_logits(flax_model.params, cfg, pix, ids, am)),
                               atol=1e-5)
