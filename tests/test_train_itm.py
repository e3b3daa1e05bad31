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
    projection_dim=8, pool_scenes=60, workers=1, seed=0, log_every=1, caption_steps=0,
    caption_scenes=20, pretrain_steps=12, pretrain_buffer=48, pretrain_fresh=4)


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
    assert images.shape == (32, 80, 80, 3) and images.dtype == np.uint8
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
    assert cfg.vision.grid == (5, 5)  # one patch per ShapesRef v2 cell
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
    np.testing.assert_allclose(got, training.posemb_sincos_2d(5, 5, TINY.width), rtol=1e-6)
    with pytest.raises(ValueError, match="pos_init"):
        training.init_model(dataclasses.replace(TINY, pos_init="x"),
                             training.model_config(TINY), jax.random.PRNGKey(0))


def test_caption_pool_positives_present_negatives_absent(tokenizer):
    from iterprime_jax import shapesref as sr

    cap = training.caption_pool(TINY, tokenizer, 6, seed=1)
    again = training.caption_pool(TINY, tokenizer, 6, seed=1)
    np.testing.assert_array_equal(cap.images, again.images)
    assert cap.texts == again.texts
    rng = np.random.default_rng([1, 55])  # caption_pool's stream: same scenes
    for i in range(6):
        scene = sr.generate_scene(rng, sr.ShapesRefConfig(), sr.KINDS[int(rng.integers(3))])
        np.testing.assert_array_equal(scene.image, cap.images[i])
        pos = [cap.texts[j] for j in cap.pos[cap.pos_off[i]:cap.pos_off[i + 1]]]
        neg = [cap.texts[j] for j in cap.neg[cap.neg_off[i]:cap.neg_off[i + 1]]]
        assert pos and neg
        for text, want in [(t, True) for t in pos] + [(t, False) for t in neg]:
            assert sr.expression_truth(scene, sr.parse_expression(text)) is want, text
        for _ in range(len(pos) + len(neg)):  # skip the "the " coin flips of this scene
            rng.random()


def test_curriculum_stages_and_vision_init(tokenizer, pool):
    tc = dataclasses.replace(TINY, steps=3, caption_steps=2)
    vision, hist = training.pretrain_vision(tc, eval_every=6)
    assert [h["step"] for h in hist] == [6, 12]
    assert set(hist[-1]) >= {"s", "c", "sc", "ss"}
    params, _, history = training.train(tc, tokenizer, pool, progress=False,
                                        vision_init=vision)
    assert [h["stage"] for h in history] == ["captions"] * 2 + ["expressions"] * 3
    # the ViT started from the pretrained weights (not from init_model's draw)
    scratch, _, _ = training.train(tc, tokenizer, pool, progress=False)
    a = params["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
    b = scratch["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
    assert not np.allclose(a, b)


def test_pretraining_lowers_the_presence_loss():
    from iterprime_jax import shapesref as sr
    from iterprime_jax.training import pretrain

    tc = dataclasses.replace(TINY, pretrain_steps=40, pretrain_lr=3e-3)
    cfg = training.model_config(tc)
    labels = pretrain.presence_labels(sr.ShapesRefConfig())
    images, y = pretrain.presence_batch(np.random.default_rng(9), sr.ShapesRefConfig(),
                                        labels, 64)
    assert y.shape == (64, len(labels)) and set(np.unique(y)) == {0.0, 1.0}
    pixels = training.normalise_images(images, cfg)
    init = training.init_model(tc, cfg, jax.random.PRNGKey(0))["vision_model"]
    vision, _ = training.pretrain_vision(tc, eval_every=40)

    def best_linear_loss(v):  # loss of a least-squares head on the frozen features
        from iterprime_jax.models.blip.modeling import encode_image
        f = np.asarray(encode_image({"vision_model": v}, cfg, pixels)[:, 1:].max(1))
        f = np.concatenate([f, np.ones((len(f), 1))], 1)
        w, *_ = np.linalg.lstsq(f, y, rcond=None)
        return float(((f @ w - y) ** 2).mean())

    assert best_linear_loss(vision) < best_linear_loss(init)
