"""Small ShapesRef ITM training: a tiny config learns, and its weights round-trip through load."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

import iterprime_jax
from iterprime_jax import training
from iterprime_jax.models.blip.modeling import itm_logits
from iterprime_jax.training.trainer import _parser

TINY = training.TrainConfig(
    steps=30, batch_size=16, lr=2e-3, warmup=3, width=32, heads=2, vision_layers=1,
    text_layers=1, patch_size=16, max_text_length=20, max_position_embeddings=24,
    projection_dim=8, pool_scenes=60, workers=1, seed=0, log_every=1)


@pytest.fixture(scope="module")
def tokenizer():
    return training.make_tokenizer()


@pytest.fixture(scope="module")
def pool(tokenizer):
    return training.build_pool(TINY, tokenizer, TINY.pool_scenes, TINY.seed, workers=1)


def test_pool_is_deterministic_and_tokenised_with_template(tokenizer, pool):
    again = training.build_pool(TINY, tokenizer, 5, TINY.seed, workers=1)
    np.testing.assert_array_equal(again.images, pool.images[:5])
    assert len(pool) == TINY.pool_scenes
    assert len(pool.pos) >= len(pool) and len(pool.neg) > 0
    ids = pool.ids[0][pool.mask[0] == 1]
    text = tokenizer.decode(ids[1:-1])
    assert text == "there is a " + pool.texts[0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    images, b_ids, b_mask, labels = pool.sample(np.random.default_rng(0), 32)
    assert images.shape == (32, 64, 64, 3) and images.dtype == np.uint8
    assert b_ids.shape == b_mask.shape == (32, TINY.max_text_length)
    assert set(np.unique(labels)) <= {0, 1} and 0 < labels.sum() < 32


def test_loss_decreases(tokenizer, pool):
    _, _, history = training.train(dataclasses.replace(TINY, log_every=1), tokenizer, pool,
                                   progress=False)
    losses = [h["loss"] for h in history]  # one row per step
    assert len(losses) == TINY.steps
    assert np.all(np.isfinite(losses))
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < first - 0.02, (first, last)


def test_save_load_roundtrip(tmp_path, tokenizer, pool):
    tc = dataclasses.replace(TINY, steps=2)
    params, config, history = training.train(tc, tokenizer, pool, progress=False)
    assert [h["step"] for h in history] == [1, 2]
    out = training.save_model(tmp_path / "m", params, config)
    model = iterprime_jax.load(out)
    assert model.config == config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(model.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert model.tokenizer.tokenize("There is a Red Circle") == ["there", "is", "a", "red",
                                                                 "circle"]
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    images, ids, mask, _ = pool.sample(np.random.default_rng(1), 4)
    pixels = training.normalise_images(images, config)
    got = itm_logits(model.params, model.config, pixels, ids, mask)
    want = itm_logits(params, config, pixels, ids, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_model_config_and_cli_defaults():
    cfg = training.model_config(training.TrainConfig())
    assert cfg.text.vocab_size == 30524
    assert cfg.vision.grid == (8, 8)
    assert cfg.text.encoder_hidden_size == cfg.vision.hidden_size
    assert cfg.text.max_position_embeddings >= iterprime_jax.IteRPrimEConfig().max_text_length
    args = _parser().parse_args(["--out", "x", "--steps", "7"])
    assert args.steps == 7 and args.width == training.TrainConfig().width


def test_itm_by_negative_kind_reports_each_perturbation(tokenizer, pool):
    params, config, _ = training.train(dataclasses.replace(TINY, steps=1), tokenizer, pool,
                                        progress=False)
    got = training.itm_by_negative_kind(params, config, tokenizer, num_scenes=9, seed=3)
    assert set(got) == {"attribute", "position", "relation"}
    for kind, groups in got.items():
        assert groups["match"]["n"] == 3, kind
        assert {"colour", "shape"} <= set(groups), kind
        for g, v in groups.items():
            assert 0.0 <= v["accuracy"] <= 1.0 and v["n"] >= 1, (kind, g)
    assert "relation" in got["relation"] and "relation" not in got["position"]
    assert training.itm_by_negative_kind(params, config, tokenizer, num_scenes=9, seed=3) == got


def test_shape_swaps_are_false_and_differ_only_in_shape(tokenizer):
    from iterprime_jax import shapesref as sr

    rng = np.random.default_rng(5)
    scene = sr.generate_scene(rng, sr.ShapesRefConfig(), "attribute")
    ref = sr.make_ref(scene, scene.targets[0], rng)
    swaps = training.shape_swaps(scene, ref.expressions, 3, rng)
    assert 1 <= len(swaps) <= 3
    for text in swaps:
        e = sr.parse_expression(text)
        assert sr.expression_truth(scene, e) is False
        assert any(dataclasses.replace(e.desc, shape=x.desc.shape) == x.desc
                   and e.desc.shape != x.desc.shape for x in ref.expressions), text
    tc = dataclasses.replace(TINY, shape_negatives=2)
    more = training.build_pool(tc, tokenizer, 6, 0, workers=1)
    base = training.build_pool(TINY, tokenizer, 6, 0, workers=1)
    assert len(more.neg) > len(base.neg)


def test_posemb_sincos_2d_init():
    pe = training.posemb_sincos_2d(3, 4, 8)
    assert pe.shape == (1, 13, 8)
    np.testing.assert_array_equal(pe[0, 0], 0.0)
    # patch (row 2, column 3), row-major; width 8 -> frequencies w = (1, 0.01)
    w = np.array([1.0, 0.01])
    want = np.concatenate([np.sin(2 * w), np.cos(2 * w), np.sin(3 * w), np.cos(3 * w)])
    np.testing.assert_allclose(pe[0, 1 + 4 * 2 + 3], want, rtol=1e-6)
    tc = dataclasses.replace(TINY, pos_init="sincos")
    params = training.init_model(tc, training.model_config(tc), jax.random.PRNGKey(0))
    got = np.asarray(params["vision_model"]["embeddings"]["position_embedding"])
    np.testing.assert_allclose(got, training.posemb_sincos_2d(4, 4, TINY.width), rtol=1e-6)
    with pytest.raises(ValueError, match="pos_init"):
        training.init_model(dataclasses.replace(TINY, pos_init="x"),
                             training.model_config(TINY), jax.random.PRNGKey(0))
