"""Small ShapesRef ITM training: a tiny config learns, and its weights round-trip through load."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iterprime_jax
from iterprime_jax.models.blip.modeling import itm_logits
from shapesref import training
from shapesref.training.trainer import _parser

TINY = training.TrainConfig(
    steps=30, batch_size=16, lr=2e-3, warmup=3, width=32, heads=2, vision_layers=1,
    text_layers=1, patch_size=16, max_text_length=20, max_position_embeddings=24,
    projection_dim=8, pool_scenes=60, workers=1, seed=0, log_every=1, caption_steps=0,
    caption_scenes=20, pretrain_steps=12, pretrain_buffer=48, pretrain_fresh=4,
    relation_pairs=0, position_statements=0, pos_init="normal", pos_scale=1.0)


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
    _, _, history, _ = training.train(dataclasses.replace(TINY, log_every=1), tokenizer, pool,
                                      progress=False)
    losses = [h["loss"] for h in history]  # one row per step
    assert len(losses) == TINY.steps
    assert np.all(np.isfinite(losses))
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < first - 0.02, (first, last)


def test_train_step_closes_over_the_optimizer_compiles_once_and_donates(tokenizer, pool):
    from shapesref.training.trainer import init_state, make_optimizer, make_train_step

    config = training.model_config(TINY)
    params = training.init_model(TINY, config, jax.random.PRNGKey(0))
    opt = make_optimizer(TINY)
    step = make_train_step(config, opt)
    state = init_state(params, opt)
    rng = np.random.default_rng(0)
    for _ in range(3):
        images, ids, mask, labels = pool.sample(rng, TINY.batch_size)
        old = state
        state, loss, acc = step(state, training.normalise_images(images, config), ids, mask,
                                labels)
        assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0
    assert step._cache_size() == 1  # one compilation for the run: no static optax argument
    leaf = jax.tree_util.tree_leaves(old.params)[0]
    assert leaf.is_deleted()  # the state was donated
    first = jax.tree_util.tree_leaves(params)[0]
    assert not first.is_deleted()  # init_state copied the caller's params
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   params, jax.device_get(state.params))
    assert any(jax.tree_util.tree_leaves(moved))


def test_save_load_roundtrip(tmp_path, tokenizer, pool):
    tc = dataclasses.replace(TINY, steps=2)
    params, config, history, _ = training.train(tc, tokenizer, pool, progress=False)
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
    params, config, _, _ = training.train(dataclasses.replace(TINY, steps=1), tokenizer, pool,
                                          progress=False)
    got = training.itm_by_negative_kind(params, config, tokenizer, num_scenes=9, seed=3)
    assert set(got) == {"attribute", "position", "relation"}
    for kind, groups in got.items():
        assert groups["match"]["n"] == 3, kind
        assert {"colour", "shape"} <= set(groups), kind
        for v in groups.values():
            assert v["n"] >= 1 and v["accuracy"] * v["n"] == round(v["accuracy"] * v["n"])
    assert "relation" in got["relation"] and "relation" not in got["position"]
    assert training.itm_by_negative_kind(params, config, tokenizer, num_scenes=9, seed=3) == got
    # a head that always says "match" scores 1 on the positives and 0 on every negative; one
    # that never does, the reverse (so the labels and groups are what they claim)
    for says, want_match in ((1, 1.0), (0, 0.0)):
        head = {"kernel": jnp.zeros_like(params["itm_head"]["kernel"]),
                "bias": jnp.asarray([1.0 - says, float(says)])}
        fixed = training.itm_by_negative_kind({**params, "itm_head": head}, config, tokenizer,
                                              num_scenes=9, seed=3)
        for kind, groups in fixed.items():
            for g, v in groups.items():
                assert v["n"] == got[kind][g]["n"]
                assert v["accuracy"] == (want_match if g == "match" else 1.0 - want_match)
        itm = training.evaluate_itm({**params, "itm_head": head}, config, pool, n=16, batch=8)
        assert itm["pairs"] == 16
        assert (itm["accuracy_match"], itm["accuracy_mismatch"]) == (want_match, 1 - want_match)
        assert 0 < itm["accuracy"] < 1  # the pool mixes positives and negatives


def test_swaps_are_false_and_differ_only_in_the_swapped_word(tokenizer):
    import shapesref as sr

    rng = np.random.default_rng(5)
    scene = sr.generate_scene(rng, sr.ShapesRefConfig(), "attribute")
    ref = sr.make_ref(scene, scene.targets[0], rng)
    swaps = training.swaps(scene, ref.expressions, "shape", 3, rng)
    assert 1 <= len(swaps) <= 3
    for text in swaps:
        e = sr.parse_expression(text)
        assert sr.expression_truth(scene, e) is False
        assert any(dataclasses.replace(e.desc, shape=x.desc.shape) == x.desc
                   and e.desc.shape != x.desc.shape for x in ref.expressions), text
    tc = dataclasses.replace(TINY, size_negatives=4, relation_negatives=6)
    more = training.build_pool(tc, tokenizer, 6, 0, workers=1)
    base = training.build_pool(dataclasses.replace(TINY, size_negatives=0, relation_negatives=0),
                               tokenizer, 6, 0, workers=1)
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
    import shapesref as sr

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
    params, _, history, _ = training.train(tc, tokenizer, pool, progress=False,
                                           vision_init=vision)
    assert [h["stage"] for h in history] == ["captions"] * 2 + ["expressions"] * 3
    # the ViT started from the pretrained weights (not from init_model's draw)
    scratch, _, _, _ = training.train(tc, tokenizer, pool, progress=False)
    a = params["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
    b = scratch["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
    assert not np.allclose(a, b)


def test_pretraining_lowers_the_presence_loss():
    import shapesref as sr
    from shapesref.training import pretrain

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


def test_relation_pairs_are_certified_and_swap_roles_or_relation():
    import shapesref as sr

    rng = np.random.default_rng(11)
    n_neg_total = 0
    for kind in sr.KINDS:
        scene = sr.generate_scene(rng, sr.ShapesRefConfig(), kind)
        pos, neg = training.relation_pairs(scene, 3, 6, rng)
        assert 1 <= len(pos) <= 3 and len(neg) <= 6, (kind, pos, neg)
        for text in pos:
            e = sr.parse_expression(text)
            assert e.relation is not None and sr.expression_truth(scene, e) is True, text
        for text in neg:
            e = sr.parse_expression(text)
            assert e.relation is not None and sr.expression_truth(scene, e) is False, text
        n_neg_total += len(neg)
        # each negative differs from some positive by the relation or by the roles
        parsed = [sr.parse_expression(t) for t in pos]
        for text in neg:
            e = sr.parse_expression(text)
            assert any((e.desc, e.landmark) == (p.desc, p.landmark) and e.relation != p.relation
                       or (e.desc, e.landmark, e.relation) == (p.landmark, p.desc, p.relation)
                       for p in parsed), text
    assert n_neg_total > 0
    tc = dataclasses.replace(TINY, relation_pairs=2)
    tok = training.make_tokenizer()
    more = training.build_pool(tc, tok, 6, 0, workers=1)
    base = training.build_pool(TINY, tok, 6, 0, workers=1)
    assert len(more.pos) > len(base.pos) and len(more.neg) > len(base.neg)
    np.testing.assert_array_equal(more.images, base.images)  # same scenes, more texts


def test_stream_pool_has_build_pools_scenes_and_follows_its_schedule(tokenizer):
    from shapesref.training.stream import StreamPool

    tc = dataclasses.replace(TINY, relation_pairs=2)
    ref = training.build_pool(tc, tokenizer, 60, 4, workers=1, chunk=20)
    sp = StreamPool(tc, str(training.DEFAULT_VOCAB), 4, workers=2, chunk=20, total_chunks=3,
                    initial_chunks=1, draws_per_chunk=32)
    try:
        rng = np.random.default_rng(0)
        sizes = []
        for _ in range(4):
            images, ids, mask, labels = sp.sample(rng, 16)
            sizes.append(len(sp))
            assert images.shape == (16, 80, 80, 3) and ids.shape == mask.shape
            np.testing.assert_array_equal(mask, (ids != 0).astype(np.int32))
            assert (ids[:, 0] == tokenizer.cls_token_id).all()
        assert sizes == [20, 20, 40, 40]  # one chunk per 32 draws after the first
        while sp.available_chunks() < 3:
            sp.sample(rng, 16)
        view = sp.view()
    finally:
        sp.close()
    np.testing.assert_array_equal(view.images, ref.images)

    def texts(pool, i, which):
        idx, off = (pool.pos, pool.pos_off) if which == "pos" else (pool.neg, pool.neg_off)
        return sorted(tuple(pool.ids[j]) for j in idx[off[i]:off[i + 1]])

    for i in range(60):
        assert texts(view, i, "pos") == texts(ref, i, "pos"), i
        assert texts(view, i, "neg") == texts(ref, i, "neg"), i


def test_cli_stream_time_budget_and_diagnose_only(tmp_path):
    from shapesref.training.trainer import main

    out = tmp_path / "m"
    common = ["--out", str(out), "--batch-size", "8", "--width", "32", "--heads", "2",
              "--vision-layers", "1", "--text-layers", "1", "--max-text-length", "20",
              "--max-position-embeddings", "24", "--projection-dim", "8", "--log-every", "1",
              "--no-progress"]
    rec = main([*common, "--stream-workers", "1", "--stream-chunk", "10", "--stream-scenes",
                "30", "--draws-per-chunk", "16", "--time-budget", "2", "--caption-steps", "2",
                "--caption-scenes", "10", "--pretrain-steps", "0", "--relation-pairs", "1",
                "--no-diagnose"])
    steps = rec["recipe"]["steps"]
    assert steps >= 1 and rec["history"][-1]["step"] == steps + 2  # steps chosen by the budget
    assert rec["stream"]["scenes_joined"] >= 10 and "heldout_itm" not in rec
    assert iterprime_jax.load(out).config.vision.hidden_size == 32
    again = main(["--out", str(out), "--diagnose-only", "--probe-images", "2"])
    assert again["recipe"] == rec["recipe"] and again["history"] == rec["history"]
    assert {"attribute", "position", "relation"} <= set(again["heldout_itm_by_negative"])
    itm = again["heldout_itm"]  # the overall accuracy is the pair-weighted mean of the two
    assert itm["pairs"] == 2000 and (itm["accuracy"] * 2000) == pytest.approx(
        round(itm["accuracy"] * 2000), abs=1e-6)
    lo, hi = sorted((itm["accuracy_match"], itm["accuracy_mismatch"]))
    assert lo <= itm["accuracy"] <= hi
    logged = json.loads((out / training.LOG_NAME).read_text())
    for key in ("best", "hit_rate"):
        assert logged["localisation_probe"][key] == again["localisation_probe"][key]
    assert json.loads((out / "method.json").read_text())["layer"] == 0


def test_position_statements_are_certified_about_singled_out_objects():
    import shapesref as sr
    from shapesref.truth import _matching

    rng = np.random.default_rng(12)
    seen_pos = seen_neg = 0
    for i in range(6):
        scene = sr.generate_scene(rng, sr.ShapesRefConfig(), sr.KINDS[i % 3])
        pos, neg = training.position_statements(scene, 4, 4, rng)
        assert len(pos) <= 4 and len(neg) <= 4
        for text, want in [(t, True) for t in pos] + [(t, False) for t in neg]:
            e = sr.parse_expression(text)
            assert e.position is not None and e.relation is None, text
            assert len(_matching(scene, e.desc)) == 1, text  # one fitting object
            assert sr.expression_truth(scene, e) is want, text
        seen_pos += len(pos)
        seen_neg += len(neg)
    assert seen_pos > 0 and seen_neg > 0


def test_patch_position_information_sees_position_embeddings():
    from shapesref.scripts.patch_position_info import patch_position_information

    tc = dataclasses.replace(TINY, pos_init="sincos")
    cfg = training.model_config(tc)
    vision = training.init_model(tc, cfg, jax.random.PRNGKey(0))["vision_model"]
    emb = vision["embeddings"]
    strong = {**vision, "embeddings": {**emb,
                                       "position_embedding": emb["position_embedding"] * 20}}
    none = {**vision, "embeddings": {**emb,
                                     "position_embedding": emb["position_embedding"] * 0}}
    hi = patch_position_information(strong, cfg, num_images=30)
    lo = patch_position_information(none, cfg, num_images=30)
    assert hi["row"] > 0.95 and hi["column"] > 0.95, hi
    assert lo["row"] < hi["row"] - 0.2 and lo["column"] < hi["column"] - 0.2, lo
