"""Issue #27, the library / one-image side: bad inputs are refused with one line naming them,
never decoded into garbage or silently altered."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

import iterprime_jax as ij
from iterprime_jax.evaluation.config import EvalError
from iterprime_jax.evaluation.proposals import (
    load_proposals_file,
    read_proposals_json,
    rle_string_counts,
)
from iterprime_jax.image_input import to_rgb_uint8
from iterprime_jax.method.select import binary_masks, check_proposals
from iterprime_jax.models.mask2former.preprocess import check_image
from iterprime_jax.segment_cli import check_out_path, read_image, read_proposals


# --------------------------------------------------------------------------- 1. RLE proposals
def _write(path, items):
    path.write_text(json.dumps(items))
    return path


@pytest.mark.parametrize("counts", [[10, 20], ":d0", [6400, 5], "0", "\x7f\x7f"])
def test_malformed_rle_counts_refused(tmp_path, counts):
    f = _write(tmp_path / "p.json", [
        {"image_id": 3, "segmentation": {"size": [80, 80], "counts": [6400]}},
        {"image_id": 3, "segmentation": {"size": [80, 80], "counts": counts}}])
    for read in (lambda: load_proposals_file(f), lambda: read_proposals_json(f, (80, 80))):
        with pytest.raises(EvalError, match="entry 1") as e:
            read()
        assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_valid_rles_still_read(tmp_path):
    from pycocotools import mask as mu

    m = np.zeros((7, 9), bool)
    m[2:5, 3:8] = True
    rle = mu.encode(np.asfortranarray(m))
    f = _write(tmp_path / "p.json", [
        {"image_id": 1, "segmentation": {"size": [7, 9], "counts": rle["counts"].decode()}},
        {"image_id": 1, "segmentation": {"size": [7, 9], "counts": [63]}}])
    got = read_proposals_json(f, (7, 9))
    np.testing.assert_array_equal(got[0], m)
    assert not got[1].any()


def test_rle_string_counts_matches_pycocotools():
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((13, 17)) > rng.random()
        s = mu.encode(np.asfortranarray(m))["counts"].decode()
        runs = rle_string_counts(s)
        assert sum(runs) == 13 * 17
        back = mu.decode(mu.frPyObjects({"size": [13, 17], "counts": runs}, 13, 17))
        np.testing.assert_array_equal(back.astype(bool), m)


def test_rle_sizes_must_agree_within_an_image(tmp_path):
    f = _write(tmp_path / "p.json", [
        {"image_id": 3, "segmentation": {"size": [8, 8], "counts": [64]}},
        {"image_id": 3, "segmentation": {"size": [4, 16], "counts": [64]}}])
    with pytest.raises(EvalError, match="entry 1 .*size"):
        load_proposals_file(f)


def test_one_image_reader_refuses_several_images(tmp_path):
    f = _write(tmp_path / "p.json", [
        {"image_id": 1, "segmentation": {"size": [8, 8], "counts": [64]}},
        {"image_id": 2, "segmentation": {"size": [8, 8], "counts": [64]}}])
    with pytest.raises(EvalError, match="2 images"):
        read_proposals_json(f, (8, 8))
    with pytest.raises(ValueError, match="2 images"):
        read_proposals(f, (8, 8))


def test_size_error_names_no_fake_image_id(tmp_path):
    f = _write(tmp_path / "p.json", [{"size": [8, 8], "counts": [64]}])
    with pytest.raises(EvalError) as e:
        read_proposals_json(f, (9, 9))
    assert "-1" not in str(e.value) and str(f) in str(e.value)


# --------------------------------------------------------------------------- 2. soft proposals
@pytest.mark.parametrize("bad,msg", [
    (np.full((2, 4, 4), 0.95, np.float32), r"float32 with values in \[0.95, 0.95\]"),
    (np.array([[[0.05, 0.95], [0.0, 1.0]]]), "float64"),
    (np.full((1, 2, 2), -3.2, np.float32), "-3.2"),
    (np.array([[[np.nan, 1.0], [0.0, 1.0]]]), "NaN"),
    (np.ones((1, 2, 2), np.float32), "float32"),
    (np.array([[[0, 2], [1, 0]]]), r"int64 with values in \[0, 2\]"),
    (np.array([[[0, 255], [1, 0]]], np.uint8), r"\[0, 255\]"),
])
def test_soft_proposals_refused(bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        check_proposals(bad, bad.shape[1:])
    assert "masks > 0.5" in str(e.value)


@pytest.mark.parametrize("ok", [
    np.array([[[0, 1], [1, 0]]], np.uint8), np.array([[[0, 255], [255, 0]]], np.uint8),
    np.array([[[0, 1], [1, 0]]], np.int64), np.array([[[False, True], [True, False]]])])
def test_binary_proposals_accepted(ok):
    np.testing.assert_array_equal(binary_masks(ok), np.array([[[0, 1], [1, 0]]], bool))


def test_segment_refuses_soft_and_zero_proposals(tiny_model):
    img = np.zeros((20, 24, 3), np.uint8)
    with pytest.raises(ValueError, match="masks > 0.5"):
        ij.segment(tiny_model, img, "a cat", np.full((2, 20, 24), 0.5, np.float32))
    with pytest.raises(ValueError, match="proposals=None"):
        ij.segment(tiny_model, img, "a cat", np.zeros((0, 20, 24), bool))


def test_segment_images_empty_is_clear(tiny_model):
    with pytest.raises(ValueError, match="no images"):
        ij.segment_images(tiny_model, [], [])


def test_segment_path_is_a_type_error(tiny_model, tmp_path):
    with pytest.raises(TypeError, match="load it first"):
        ij.segment(tiny_model, str(tmp_path / "x.jpg"), "a cat")


# --------------------------------------------------------------------------- 3. images
def test_uint16_and_pil_16bit_are_rescaled():
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    want = np.round(ramp / 257).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(ramp)[..., 0], want)
    np.testing.assert_array_equal(to_rgb_uint8(np.stack([ramp] * 3, -1))[..., 1], want)
    pil16 = Image.fromarray(ramp)  # mode I;16
    assert pil16.mode.startswith("I;16")
    np.testing.assert_array_equal(to_rgb_uint8(pil16)[..., 2], want)
    i32 = Image.fromarray(ramp.astype(np.int32))  # mode I, 16-bit range
    assert i32.mode == "I"
    np.testing.assert_array_equal(to_rgb_uint8(i32)[..., 0], want)
    i8 = Image.fromarray((ramp // 257).astype(np.int32))  # mode I, 8-bit range: kept
    np.testing.assert_array_equal(to_rgb_uint8(i8)[..., 0], (ramp // 257).astype(np.uint8))
    assert 0.3 < to_rgb_uint8(pil16).mean() / 255 < 0.7  # not clipped to white


def test_16bit_png_file_is_rescaled(tmp_path):
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(got[..., 0], np.round(ramp / 257).astype(np.uint8))


@pytest.mark.parametrize("bad,msg", [
    (Image.fromarray(np.zeros((5, 5), np.float32)), "mode F"),
    (np.zeros((5, 5, 3), np.float32), "dtype float32"),
    (Image.fromarray(np.full((5, 5), 70000, np.int32)), "70000"),
])
def test_float_and_out_of_range_images_refused(bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        to_rgb_uint8(bad, "photo")
    assert "photo" in str(e.value)


def test_propose_accepts_grey_and_rgba_like_segment():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), np.uint8)
    grey = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 9, np.uint8)], -1)
    np.testing.assert_array_equal(check_image(grey), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(check_image(rgba), rgb)
    np.testing.assert_array_equal(check_image(rgba), to_rgb_uint8(rgba))
    with pytest.raises(TypeError, match="path"):
        check_image("photo.jpg")


# --------------------------------------------------------------------------- 6. segment CLI
def test_read_proposals_errors_name_the_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        read_proposals(tmp_path / "d.npy", (4, 4))
    (tmp_path / "bad.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="bad.npy"):
        read_proposals(tmp_path / "bad.npy", (4, 4))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="bad.npz"):
        read_proposals(tmp_path / "bad.npz", (4, 4))
    np.save(tmp_path / "soft.npy", np.full((2, 4, 4), 0.7, np.float32))
    with pytest.raises(ValueError, match="soft.npy.*masks > 0.5"):
        read_proposals(tmp_path / "soft.npy", (4, 4))
    np.save(tmp_path / "none.npy", np.zeros((0, 4, 4), bool))
    with pytest.raises(ValueError, match="no masks"):
        read_proposals(tmp_path / "none.npy", (4, 4))
    np.save(tmp_path / "ok.npy", np.full((1, 4, 4), 255, np.uint8))
    assert read_proposals(tmp_path / "ok.npy", (4, 4)).all()


@pytest.mark.parametrize("name", ["m.jpg", "m.jpeg", "m.webp"])
def test_lossy_out_refused(tmp_path, name):
    with pytest.raises(ValueError, match="lossy"):
        check_out_path(tmp_path / name)
    assert check_out_path(tmp_path / "m.png").name == "m.png"


def test_cli_module_does_not_shadow_the_function():
    """The one-image CLI lives in its own module (`segment_cli`): importing it leaves
    `iterprime_jax.segment` the library function, with no callable-module patch."""
    import types

    import iterprime_jax.segment_cli as cli
    from iterprime_jax.method.pipeline import segment

    assert ij.segment is segment and not isinstance(ij.segment, types.ModuleType)
    assert type(cli) is types.ModuleType and callable(cli.main)
    assert not hasattr(cli, "_CallableModule")


def test_cli_ctrl_c_is_one_line(monkeypatch, caplog, tiny_model_dir, tmp_path):
    import iterprime_jax.segment_cli as seg

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    monkeypatch.setattr(seg, "read_image", interrupt)
    with caplog.at_level(logging.ERROR, logger="iterprime_jax.segment_cli"):
        rc = seg.main(["--weights", str(tiny_model_dir), "--image", str(tmp_path / "img.png"),
                       "--text", "a cat", "--out", str(tmp_path / "m.png")])
    assert rc == 130
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "interrupted"]


def test_cli_missing_stanza_models_is_one_line(monkeypatch, caplog, tiny_model_dir, tmp_path):
    pytest.importorskip("stanza")
    import iterprime_jax.segment_cli as seg
    from iterprime_jax.method import language

    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(tmp_path / "none"))
    language._stanza_parser.cache_clear()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img.png")
    with caplog.at_level(logging.ERROR, logger="iterprime_jax.segment_cli"):
        rc = seg.main(["--weights", str(tiny_model_dir), "--image", str(tmp_path / "img.png"),
                       "--text", "a cat", "--out", str(tmp_path / "m.png"),
                       "--parser", "stanza"])
    errs = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2 and len(errs) == 1 and str(tmp_path / "none") in errs[0]
    assert "--parser spacy" in errs[0] and not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------- 4. convert
def _hf_stub(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "blip"}))
    return hf


def test_convert_refuses_non_empty_file_and_uncreatable_dst(tmp_path):
    from iterprime_jax.models.convert import main

    hf = _hf_stub(tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    for args, needle in [([str(hf), str(dst)], "not empty"),
                         ([str(hf), str(dst / "notes.txt")], "is a file"),
                         ([str(hf), str(dst / "notes.txt" / "x")], "cannot create")]:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert (dst / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


def test_convert_overwrite_replaces_the_folder_as_a_whole(tmp_path):
    from iterprime_jax.models.convert import main
    from iterprime_jax.shipped import VOCAB

    from .torch_ref import build_model, hf_config

    build_model(hf_config(), seed=0).save_pretrained(str(tmp_path / "hf"))
    (tmp_path / "hf" / "vocab.txt").write_bytes(VOCAB.read_bytes())
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "notes.txt").write_text("old")
    (dst / "mask2former_config.json").write_text("{}")  # another model's leftovers
    main([str(tmp_path / "hf"), str(dst), "--overwrite"])
    assert not (dst / "notes.txt").exists() and not (dst / "mask2former_config.json").exists()
    assert (dst / "blip_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temporary left
    assert ij.load(dst).config.vision.grid == (4, 4)


def test_pth_that_is_not_a_checkpoint_gets_no_pickle_advice(tmp_path):
    import argparse

    import torch

    from iterprime_jax.models.albef.convert import read_pth

    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "text.pth").write_text("hello world\n")
    for name in ("random.pth", "text.pth"):
        with pytest.raises(ij.CheckpointError, match="not a PyTorch checkpoint") as e:
            read_pth(tmp_path / name)
        assert "allow-pickle" not in str(e.value) and name in str(e.value)
    torch.save({"model": {"a": torch.zeros(2)}, "args": argparse.Namespace(lr=1)},
               tmp_path / "pickled.pth")
    with pytest.raises(ij.CheckpointError, match="--allow-pickle") as e:
        read_pth(tmp_path / "pickled.pth")
    assert "\x1b" not in str(e.value)


def test_convert_cli_has_no_runpy_warning(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-W", "default", "-m", "iterprime_jax.models.convert",
                          str(tmp_path / "missing"), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "found in sys.modules" not in out.stderr, out.stderr
    assert "does not exist" in out.stderr


# --------------------------------------------------------------------------- 5. loading
def test_load_messages(tiny_model_dir, tmp_path):
    import shutil

    with pytest.raises(ij.CheckpointError, match="empty"):
        ij.load("")
    bad = shutil.copytree(tiny_model_dir, tmp_path / "badcfg")
    (bad / "blip_config.json").write_text("{not json")
    with pytest.raises(ij.CheckpointError, match="blip_config.json"):
        ij.load(bad)
    (bad / "blip_config.json").write_text(json.dumps({"vision": 3}))
    with pytest.raises(ij.CheckpointError, match="blip_config.json"):
        ij.load(bad)
    nometa = shutil.copytree(tiny_model_dir, tmp_path / "nometa")
    (nometa / "params" / "_METADATA").unlink()
    with pytest.raises(ij.CheckpointError, match="damaged or incomplete") as e:
        ij.load(nometa)
    assert "params" in str(e.value) and "do not match" not in str(e.value)
