"""segment(): static-shape compilation, batched == one-by-one, bad inputs, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from PIL import Image

import iterprime_jax as ij
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method import pipeline

from .float32 import MAP_TOL, assert_clear_margin, logit_tol, prob_rtol, upsampled_map_tol

# layer 0: at the last layer only the [CLS] row reaches the ITM head (other rows get no grad)
CFG = IteRPrimEConfig(layer=0, max_text_length=16)
EXPRS = ["the man in a red shirt left of the dog", "left guy", "giraffe on the right"]


def _image(h=40, w=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _proposals(h=40, w=50, n=3):
    p = np.zeros((n, h, w), bool)
    for i in range(n):
        p[i, (i * h) // n:((i + 1) * h) // n] = True
    p[-1, :, : w // 2] = True
    return p


def test_segment_result_fields(tiny_model):
    r = ij.segment(tiny_model, _image(), EXPRS[0], _proposals(), CFG)
    assert r.mask.shape == (40, 50) and r.mask.dtype == bool
    assert r.heatmap.shape == (40, 50) and r.heatmap.dtype == np.float32
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() == pytest.approx(1.0)
    assert r.primary_word == "man" and 1 <= r.iterations <= CFG.iterations
    assert 0 <= r.proposal_index < 3 and r.has_candidate
    assert np.array_equal(r.mask, _proposals()[r.proposal_index])
    # the chosen proposal covers the heat map's maximum
    assert r.mask[np.unravel_index(np.argmax(r.heatmap), r.heatmap.shape)]
    assert r.heatmaps_per_iteration.shape == (CFG.iterations, 4, 4)


def test_compiles_once_per_bucket(tiny_model):
    # a structural setting no other test uses: its own jit cache entries (float settings such
    # as alpha are traced and share the entries)
    cfg = CFG.replace(max_components=11)
    ij.segment(tiny_model, _image(), "warm up", _proposals(n=3), cfg)  # 7 tokens: bucket 8
    before = pipeline.segment_core_jit._cache_size()
    # other text of the same token bucket, other proposal count in the same bucket (4), other
    # image size (same canvas 64)
    ij.segment(tiny_model, _image(30, 60, 1), "a blue car", _proposals(30, 60, 4), cfg)
    ij.segment(tiny_model, _image(64, 20, 2), "left guy", _proposals(64, 20, 2), cfg)
    assert pipeline.segment_core_jit._cache_size() == before
    ij.segment(tiny_model, _image(), "left guy", _proposals(n=5), cfg)  # bucket 8: one more
    assert pipeline.segment_core_jit._cache_size() == before + 1
    # 9 and 10 prompt tokens: both in the next text-length bucket (16), one more compilation
    ij.segment(tiny_model, _image(), "giraffe on the right", _proposals(n=3), cfg)
    ij.segment(tiny_model, _image(), "the giraffe on the left", _proposals(n=4), cfg)
    assert pipeline.segment_core_jit._cache_size() == before + 2


def test_text_length_bucket_drops_only_padding(tiny_model):
    """Prompts padded to 40 and cut to their bucket (16) give the same results."""
    cfg = CFG.replace(max_text_length=40)
    batch = pipeline.encode_texts(tiny_model, EXPRS, cfg)
    lengths = batch.attention_mask.sum(-1)
    assert batch.input_ids.shape[1] == 40 and 8 < lengths.max() <= 16
    assert pipeline.text_length_bucket(batch.attention_mask, 40) == 16
    assert pipeline.text_length_bucket(batch.attention_mask, 12) == 12  # capped
    assert pipeline.text_length_bucket(batch.attention_mask[1:2], 40) == 8  # "left guy"
    with pytest.raises(ValueError, match="some are longer"):
        pipeline.pad_text(batch, 4, int(lengths.max()) - 1)
    prep = pipeline.prepare_image(_image(), tiny_model.config, _proposals())
    emb = pipeline.encode_image_jit(tiny_model.params, tiny_model.config, prep.pixels[None])

    def run(text):
        return jax.device_get(pipeline.segment_core_jit(
            tiny_model.params, tiny_model.config, cfg, prep.canvas, pipeline.CoreInputs(
                emb, text, np.asarray(prep.hw, np.int32), prep.proposal_arrays)))

    full = run(pipeline.pad_text(batch, 4))
    cut = run(pipeline.pad_text(batch, 4, 16))
    assert pipeline.pad_text(batch, 4, 16)[0].shape == (4, 16)
    # decisions: same passes accepted, same stop, same proposal (the scores are far enough
    # apart that float32 reordering cannot flip them), and both IGRS branches are exercised
    assert_clear_margin(full.igrs.scores, prob_rtol())
    np.testing.assert_array_equal(cut.igrs.iterations, full.igrs.iterations)
    assert set(full.igrs.iterations.tolist()) >= {1, 3}
    np.testing.assert_array_equal(np.isnan(cut.igrs.scores), np.isnan(full.igrs.scores))
    np.testing.assert_array_equal(cut.index, full.index)
    np.testing.assert_array_equal(cut.mask, full.mask)
    # values: equal up to float32 reordering (tests/float32.py)
    np.testing.assert_allclose(cut.igrs.scores, full.igrs.scores, rtol=prob_rtol(), atol=0)
    np.testing.assert_allclose(cut.igrs.heats, full.igrs.heats, atol=MAP_TOL, rtol=0)
    # ... and that tolerance tells sentences apart: their maps differ far beyond it
    assert np.abs(full.igrs.heats[0, 0] - full.igrs.heats[2, 0]).max() > 100 * MAP_TOL


def test_batched_equals_one_by_one(tiny_model):
    img, props = _image(), _proposals()
    batched = ij.segment_batch(tiny_model, img, EXPRS, props, CFG)
    for expr, b in zip(EXPRS, batched, strict=True):
        single = ij.segment(tiny_model, img, expr, props, CFG)
        _assert_same_up_to_reordering(single, b)
        assert single.primary_word == b.primary_word
        np.testing.assert_array_equal(single.mask, b.mask)


def _assert_same_up_to_reordering(a, b):
    """Two results of the same sentence computed in another float32 summation order (batch
    size, vmap): same decisions, per-pass maps within MAP_TOL, and a returned map no farther
    apart than its post-processing can make of the grid maps' difference (tests/float32.py)."""
    assert_clear_margin(a.scores[None], prob_rtol())
    assert a.proposal_index == b.proposal_index and a.iterations == b.iterations
    np.testing.assert_allclose(a.scores, b.scores, rtol=prob_rtol(), atol=0)
    grid = np.abs(a.heatmaps_per_iteration - b.heatmaps_per_iteration)
    grid = np.nan_to_num(grid, nan=0.0).max()
    assert grid <= MAP_TOL
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=upsampled_map_tol(grid), rtol=0)


def test_vmap_over_images_equals_per_image(tiny_model):
    imgs = [_image(), _image(30, 60, 3)]
    exprs = [EXPRS[:2], EXPRS[2:]]
    props = [_proposals(), _proposals(30, 60, 2)]
    multi = ij.segment_images(tiny_model, imgs, exprs, props, CFG)
    for img, ex, pr, res in zip(imgs, exprs, props, multi, strict=True):
        per = ij.segment_batch(tiny_model, img, ex, pr, CFG)
        for a, b in zip(per, res, strict=True):
            _assert_same_up_to_reordering(a, b)


def test_no_proposals_is_threshold_baseline(tiny_model):
    r = ij.segment(tiny_model, _image(), "left guy", None, CFG)
    assert r.proposal_index == -1
    np.testing.assert_array_equal(r.mask, r.heatmap >= CFG.heat_threshold)


@pytest.mark.parametrize("switch, expr", [(dict(use_pwe=False), EXPRS[0]),
                                          (dict(use_template=False), EXPRS[0]),
                                          (dict(layer=1), EXPRS[0]),
                                          # only matters without a primary word
                                          (dict(no_primary_tokens="focus"), "on the left")])
def test_every_ablation_switch_changes_the_result(tiny_model, switch, expr):
    base = ij.segment(tiny_model, _image(), expr, _proposals(), CFG)
    r = ij.segment(tiny_model, _image(), expr, _proposals(), CFG.replace(**switch))
    assert r.mask.shape == (40, 50) and np.isfinite(r.heatmap).all()
    assert (base.primary_word is None) == ("no_primary_tokens" in switch)
    # the switch reaches the computation: the map moves far beyond float32 noise (MAP_TOL)
    assert np.abs(r.heatmap - base.heatmap).max() > 0.1, switch
    # and the selection still follows the map: the chosen proposal covers its maximum
    assert np.array_equal(r.mask, _proposals()[r.proposal_index])
    assert r.mask[np.unravel_index(np.argmax(r.heatmap), r.heatmap.shape)]


def _torch_bicubic(x, hw):
    t = torch.from_numpy(np.asarray(x, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=hw, mode="bicubic",
                                           align_corners=False)[0, 0].numpy()


def expected_heatmap(r, cfg, hw=(40, 50)):
    """docs/method.md section 3 from a result's per-pass maps and scores: the blend of accepted
    passes (plus the rejected one with keep_rejected), torch-bicubic upsampled, min-max
    normalised, and stretched iff it is pass 0's own map."""
    heats, scores = r.heatmaps_per_iteration.astype(np.float64), r.scores
    run, prev, first = heats[0], scores[0], True
    for i in range(1, len(scores)):
        if scores[i] >= prev or cfg.keep_rejected:
            run, first = (1 - cfg.alpha) * run + cfg.alpha * heats[i], False
        if scores[i] < prev:
            break
        prev = scores[i]
    up = _torch_bicubic(run, hw).astype(np.float64)
    up = (up - up.min()) / (up.max() - up.min())
    if first:
        up = 1 / (1 + np.exp(-20 * (up - 0.5)))
        up = up / up.max()
    return up


MIXED = ["the man in a red shirt left of the dog", "giraffe on the right", "the dog",
         "left guy"]


def test_returned_map_iterations_alpha_keep_rejected(tiny_model):
    """Which map is returned (docs/method.md section 3) under each IGRS switch; the tiny model
    accepts later passes for some sentences and stops after pass 0 for others."""
    img = _image()
    runs = {}
    for name, cfg in {"base": CFG, "alpha": CFG.replace(alpha=0.5),
                      "keep_rejected": CFG.replace(keep_rejected=True),
                      "one_pass": CFG.replace(iterations=1),
                      "two_passes": CFG.replace(iterations=2)}.items():
        runs[name] = ij.segment_batch(tiny_model, img, MIXED, None, cfg)
        for r in runs[name]:
            assert len(r.scores) == cfg.iterations
            np.testing.assert_allclose(r.heatmap, expected_heatmap(r, cfg), atol=2e-4)
    base = runs["base"]
    accepted = [i for i, r in enumerate(base) if r.iterations > 1]
    stopped = [i for i, r in enumerate(base) if r.iterations == 1]
    assert accepted and stopped  # both branches exercised
    for i in stopped:  # pass-0 map kept: stretched (about half the pixels pushed to ~0 / ~1)
        assert np.mean((base[i].heatmap < 0.01) | (base[i].heatmap > 0.99)) > 0.5
        # alpha changes nothing; keep_rejected returns the unstretched blend
        np.testing.assert_array_equal(runs["alpha"][i].heatmap, base[i].heatmap)
        assert np.abs(runs["keep_rejected"][i].heatmap - base[i].heatmap).max() > 0.05
    for i in accepted:  # alpha changes the blend; keep_rejected changes nothing before a stop
        assert np.abs(runs["alpha"][i].heatmap - base[i].heatmap).max() > 1e-3
        if base[i].iterations == 3:
            np.testing.assert_array_equal(runs["keep_rejected"][i].heatmap, base[i].heatmap)
    for i in range(len(MIXED)):
        assert runs["one_pass"][i].iterations == 1
        assert runs["two_passes"][i].iterations == min(base[i].iterations, 2)
        np.testing.assert_allclose(runs["one_pass"][i].heatmaps_per_iteration[0],
                                   base[i].heatmaps_per_iteration[0], atol=MAP_TOL, rtol=0)


def test_bad_expressions(tiny_model):
    for bad in ["", "   \n\t"]:
        with pytest.raises(ValueError, match="empty"):
            ij.segment(tiny_model, _image(), bad, None, CFG)
    long = " ".join(["the big red dog"] * 20)
    with pytest.warns(UserWarning, match="trunc"):
        r = ij.segment(tiny_model, _image(), long, None, CFG)
    assert r.truncated


def test_bad_proposals_and_images(tiny_model):
    with pytest.raises(ValueError, match=r"\(40, 50\)"):
        ij.segment(tiny_model, _image(), "dog", _proposals(30, 50), CFG)
    with pytest.raises(ValueError):
        ij.segment(tiny_model, _image(), "dog", np.zeros((40, 50), bool), CFG)
    with pytest.raises(ValueError, match="uint8"):
        ij.segment(tiny_model, _image().astype(np.float32), "dog", None, CFG)


def test_grayscale_and_rgba_images(tiny_model):
    rgb = _image()
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 255, np.uint8)], -1)
    r_rgb = ij.segment(tiny_model, np.repeat(gray[..., None], 3, -1), "dog", _proposals(), CFG)
    r_gray = ij.segment(tiny_model, gray, "dog", _proposals(), CFG)
    np.testing.assert_allclose(r_rgb.heatmap, r_gray.heatmap, atol=1e-6)
    r4 = ij.segment(tiny_model, rgba, "dog", _proposals(), CFG)
    np.testing.assert_allclose(r4.heatmap,
                               ij.segment(tiny_model, rgb, "dog", _proposals(), CFG).heatmap,
                               atol=1e-6)


def test_jax_transforms_compose(tiny_model):
    """itm_logits is a pure function: grad w.r.t. pixels and vmap work."""
    m = tiny_model
    pix = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ids = np.array([[101, 2045, 2003, 1037, 3899, 102]] * 2, np.int32)
    am = np.ones_like(ids)

    def match(p):
        return ij.itm_logits(m.params, m.config, p, ids, am)[:, 1].sum()

    g = np.asarray(jax.jit(jax.grad(match))(pix))
    assert g.shape == pix.shape and np.isfinite(g).all()
    # the gradient is d(sum of match logits)/d(pixels): a central difference along it agrees
    # (a step that moves the logits by about 0.01, far above their float32 rounding of 1e-6)
    eps = 1e-2 / float((g * g).sum())
    slope = (float(match(pix + eps * g)) - float(match(pix - eps * g))) / (2 * eps)
    assert slope == pytest.approx(float((g * g).sum()), rel=0.05)
    per = jax.vmap(lambda p: ij.itm_logits(m.params, m.config, p[None], ids[:1], am[:1])[0])(pix)
    batch = np.asarray(ij.itm_logits(m.params, m.config, pix, ids, am))
    # float32 reordering only (tests/float32.py); the two images' logits differ far beyond that
    np.testing.assert_allclose(per, batch, atol=logit_tol(batch), rtol=0)
    assert np.abs(batch[0] - batch[1]).max() > 100 * logit_tol(batch)


def test_cli_writes_mask_and_overlay(tiny_model_dir, tmp_path):
    img_path = tmp_path / "img.png"
    Image.fromarray(_image()).save(img_path)
    np.save(tmp_path / "props.npy", _proposals())
    out = tmp_path / "out" / "mask.png"
    cmd = [sys.executable, "-m", "iterprime_jax.segment_cli", "--weights", str(tiny_model_dir),
           "--image", str(img_path), "--text", "the dog on the left", "--proposals",
           str(tmp_path / "props.npy"), "--out", str(out), "--layer", "0",
           "--max-text-length", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 255} and mask.any()
    overlay = Image.open(out.with_name("mask.overlay.png"))
    assert overlay.size == (50, 40) and overlay.mode == "RGB"
    assert any(np.array_equal(mask > 0, p) for p in _proposals())


def test_cli_bad_image(tiny_model_dir, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8not a jpeg")
    cmd = [sys.executable, "-m", "iterprime_jax.segment_cli", "--weights", str(tiny_model_dir),
           "--image", str(bad), "--text", "dog", "--out", str(tmp_path / "m.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "corrupt.jpg" in done.stderr
    assert not Path(tmp_path / "m.png").exists()


def test_cli_reads_method_json(tiny_model_dir, tmp_path, caplog):
    """The weights' method.json applies to the CLI (an out-of-range layer there is named),
    and an explicit flag beats it."""
    import shutil

    from iterprime_jax.segment_cli import main

    weights = tmp_path / "w"
    shutil.copytree(tiny_model_dir, weights)
    (weights / "method.json").write_text('{"layer": 5}')
    img_path = tmp_path / "img.png"
    Image.fromarray(_image()).save(img_path)
    args = ["--weights", str(weights), "--image", str(img_path), "--text", "the dog",
            "--out", str(tmp_path / "m.png")]
    assert main(args) == 2
    assert "layer 5 is out of range" in caplog.text and "method.json" in caplog.text
    assert not (tmp_path / "m.png").exists()
    assert main([*args, "--layer", "0", "--max-text-length", "16"]) == 0  # the flag wins
    assert (tmp_path / "m.png").exists()
    (weights / "method.json").write_text('{"layer": 0, "iterations": "three"}')
    caplog.clear()
    assert main([*args, "--layer", "0"]) == 2
    assert "'iterations' must be int" in caplog.text


def test_cli_bad_out_paths_fail_before_loading(tmp_path, caplog):
    """--out is checked first: with weights that do not exist, the error is about --out."""
    from iterprime_jax.segment_cli import main

    (tmp_path / "afile").write_text("x")
    args = ["--weights", str(tmp_path / "no-weights"), "--image", str(tmp_path / "no.png"),
            "--text", "the dog"]
    for out, msg in [(tmp_path / "afile" / "m.png", f"{tmp_path / 'afile'} is a file"),
                     (tmp_path / "afile" / "sub" / "m.png", f"{tmp_path / 'afile'} is a file"),
                     (Path("/proc/iterprime-test/m.png"),
                      "cannot create or write to the folder /proc"),
                     (tmp_path / "mask", "needs an image file extension"),
                     (tmp_path, "is a directory")]:
        caplog.clear()
        assert main([*args, "--out", str(out)]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and errors[0].startswith(f"--out {out}") and msg in errors[0], (
            out, errors)
    assert not (tmp_path / "mask").exists() and not Path("/proc/iterprime-test").exists()


@pytest.mark.parametrize("flags, method_json, msg", [
    (["--iterations", "0"], {"iterations": 3},
     "iterations 0 is out of range: must be >= 1 (from the flag --iterations)"),
    (["--alpha", "2"], {}, "alpha 2.0 is out of range: must be in [0.0, 1.0] (from the flag "
                           "--alpha)"),
    (["--alpha", "-1"], {}, "alpha -1.0 is out of range"),
    (["--stretch-sharpness", "0"], {}, "stretch_sharpness 0.0 is out of range: must be > 0.0"),
    (["--template", "no slot"], {}, "template must contain {{}} (where the expression goes), "
                                    "got 'no slot' (from the flag --template)"),
    ([], {"alpha": 2}, "alpha 2 is out of range: must be in [0.0, 1.0] (from {json})"),
    ([], {"max_components": 0}, "max_components 0 is out of range"),
])
def test_cli_method_settings_out_of_range_name_their_source(tiny_model_dir, tmp_path, caplog,
                                                            flags, method_json, msg):
    import json
    import shutil

    from iterprime_jax.segment_cli import main

    weights = tmp_path / "w"
    shutil.copytree(tiny_model_dir, weights)
    (weights / "method.json").write_text(json.dumps({"layer": 0, **method_json}))
    Image.fromarray(_image()).save(tmp_path / "img.png")
    out = tmp_path / "m.png"
    assert main(["--weights", str(weights), "--image", str(tmp_path / "img.png"), "--text",
                 "the dog", "--out", str(out), *flags]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [errors[0]] and msg.format(json=weights / "method.json") in errors[0], errors
    assert not out.exists()


def test_config_rejects_out_of_range_settings():
    for bad in [dict(alpha=1.5), dict(alpha=-0.1), dict(iterations=0), dict(mask_threshold=2.0),
                dict(heat_threshold=-1.0), dict(stretch_center=1.5), dict(max_text_length=2),
                dict(layer=-1), dict(iterations=2.5), dict(use_pwe=1),
                dict(no_primary_tokens="all"), dict(alpha=float("nan"))]:
        (name, value), = bad.items()
        with pytest.raises(ValueError, match=rf"^IteRPrimEConfig\.{name}"):
            IteRPrimEConfig(**bad)
    # the edges of each range are valid
    IteRPrimEConfig(alpha=0.0, mask_threshold=1.0, heat_threshold=0.0, stretch_center=1.0,
                    iterations=1, layer=0, max_components=1, max_text_length=3)


def test_cli_long_expression_warns_once_in_one_short_line(tiny_model_dir, tmp_path, caplog):
    from iterprime_jax.segment_cli import main

    Image.fromarray(_image()).save(tmp_path / "img.png")
    text = " ".join(["dog"] * 500)
    assert main(["--weights", str(tiny_model_dir), "--image", str(tmp_path / "img.png"),
                 "--text", text, "--out", str(tmp_path / "m.png"), "--layer", "0",
                 "--max-text-length", "16"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "\n" not in warned[0] and len(warned[0]) < 200, warned
    assert "has 505 tokens, more than max_text_length=16; truncated to its first 14" in warned[0]
