"""Mask2Former proposals end to end, with a tiny random HF Mask2Former saved with
`save_pretrained` and converted by `iterprime_jax.convert_hf_checkpoint`: `propose` against the
PyTorch model run by the authors' rule, the batched form, `run_eval.py --proposals mask2former`
(with `--save-proposals` round-tripping through `--proposals FILE`), the one-image CLI, and a
checkpoint of the wrong architecture in either place."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import iterprime_jax as ij
import run_eval
from iterprime_jax import evaluation as ev
from iterprime_jax.evaluation import index as evi
from iterprime_jax.evaluation import proposals as evp
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.models.mask2former.preprocess import ProposeConfig
from iterprime_jax.models.mask2former.propose import propose_step
from shapesref import ShapesRefConfig, write_shapesref
from tests.test_propose import torch_postprocess, torch_preprocess

DATA = Path(__file__).parent / "data"
SMALL = ProposeConfig(short_edge=96, max_size=160)  # fast; the default rule is tested once


def tiny_hf_mask2former() -> transformers.Mask2FormerForUniversalSegmentation:
    """Random Swin Mask2Former; window 5 does not divide the feature maps; the mask projection
    is scaled and shifted so that mask logits straddle logit(0.35) (proposals neither empty
    nor full)."""
    backbone = transformers.SwinConfig(
        image_size=64, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
        window_size=5, drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        num_attention_heads=4, num_queries=6, decoder_layers=2, encoder_layers=1,
        encoder_feedforward_dim=48, dim_feedforward=64, num_labels=5)
    torch.manual_seed(0)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.model.pixel_level_module.decoder.mask_projection.weight.mul_(60)
        model.model.pixel_level_module.decoder.mask_projection.bias.fill_(-2.0)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm | torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def m2f(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("m2f")
    torch_model = tiny_hf_mask2former()
    torch_model.save_pretrained(str(root / "hf"))
    convert_hf_checkpoint(root / "hf", root / "converted")
    return {"root": root, "torch": torch_model, "dir": root / "converted",
            "model": ij.load(root / "converted")}


def torch_proposals(model, image: np.ndarray, config: ProposeConfig = ProposeConfig(),
                    with_logits: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The authors' proposal path in PyTorch (detectron2 pre/post-processing, HF model): the
    masks (Q, H, W), and with `with_logits` first the upsampled mask logits."""
    x, resized = torch_preprocess(image, config.short_edge, config.max_size)
    with torch.no_grad():
        logits = model(pixel_values=x).masks_queries_logits[0]
    up, masks = torch_postprocess(logits, tuple(x.shape[2:]), resized, image.shape[:2],
                                  config.threshold)
    return (up, masks) if with_logits else masks


def _images(*shapes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


# --------------------------------------------------------------------------- propose
def test_loaded_proposer(m2f):
    from iterprime_jax.models.mask2former import Mask2FormerConfig

    model, hf = m2f["model"], m2f["torch"].config
    assert isinstance(model.config, Mask2FormerConfig)
    # the converted config carries the checkpoint's sizes, not defaults
    assert model.config.num_queries == hf.num_queries == 6
    assert model.config.num_labels == hf.num_labels
    # and the converted weights are the checkpoint's: the query embeddings, element for element
    leaves = {tuple(str(getattr(k, "key", k)) for k in path): v for path, v in
              jax.tree_util.tree_flatten_with_path(model.params)[0]}
    want = m2f["torch"].model.transformer_module.queries_embedder.weight.detach().numpy()
    hits = [k for k, v in leaves.items() if np.shape(v) == want.shape
            and np.array_equal(np.asarray(v), want)]
    assert len(hits) == 1, hits


@pytest.mark.parametrize("shape,config", [((61, 83), SMALL), ((90, 47), SMALL),
                                          ((30, 40), ProposeConfig())])
def test_propose_matches_torch(m2f, shape, config):
    (image,) = _images(shape, seed=shape[0])
    ref_logits, ref = torch_proposals(m2f["torch"], image, config, with_logits=True)
    got = ij.propose(m2f["model"], image, config.threshold, config)
    assert got.shape == (6, *shape) and got.dtype == bool
    # a pixel may differ only where the reference logit is within the model's parity
    # tolerance (1e-4 relative and absolute, test_mask2former_parity.py; bilinear upsampling is
    # a convex combination and keeps it) of the threshold's logit
    cut = np.log(config.threshold / (1 - config.threshold))
    near = ref_logits[got != ref] - cut
    assert (np.abs(near) <= 1e-4 * (1 + abs(cut))).all(), near
    assert 0.05 < ref.mean() < 0.95  # proposals neither empty nor full: not vacuous
    assert len({m.tobytes() for m in ref}) > 1  # queries differ


def test_propose_threshold_and_pil(m2f):
    (image,) = _images((50, 70), seed=5)
    low = ij.propose(m2f["model"], image, 0.2, SMALL)
    high = ij.propose(m2f["model"], image, 0.8, SMALL)
    assert (high <= low).all() and low.sum() > high.sum()
    np.testing.assert_array_equal(ij.propose(m2f["model"], Image.fromarray(image), 0.35, SMALL),
                                  ij.propose(m2f["model"], image, 0.35, SMALL))


def test_batched_equals_single_and_compiles_per_bucket(m2f):
    images = _images((60, 80), (61, 79), (60, 80), (45, 100), seed=3)
    proposer = ij.Proposer(m2f["model"], SMALL, max_batch=4)
    groups = proposer.groups([im.shape[:2] for im in images])
    assert sorted(len(g[1]) for g in groups) == [1, 3]  # (60,80),(61,79) share a bucket
    before = propose_step._cache_size()
    batched = proposer(images)
    assert propose_step._cache_size() - before <= len(groups)
    again = propose_step._cache_size()
    proposer(images[::-1])
    assert propose_step._cache_size() == again  # same buckets: no new compilation
    for im, b in zip(images, batched, strict=True):
        single = ij.propose(m2f["model"], im, 0.35, SMALL)
        assert b.shape == single.shape == (6, *im.shape[:2])
        assert (b == single).mean() >= 0.9999


# --------------------------------------------------------------------------- bad input
def test_wrong_architecture_as_proposer(m2f, tiny_model):
    (image,) = _images((40, 50))
    with pytest.raises(ValueError, match="must be a Mask2Former model.*BlipConfig"):
        ij.propose(tiny_model, image)
    with pytest.raises(ValueError, match="Mask2Former"):
        ij.Proposer(tiny_model)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
    (np.zeros((30, 40, 3), np.float32), "dtype float32"),
    (np.zeros((30, 40, 2), np.uint8), "shape"),
])
def test_propose_bad_image(m2f, bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        ij.propose(m2f["model"], bad)
    assert "image" in str(e.value)


def test_propose_accepts_grey_rgba_and_16bit_like_segment(m2f):
    """Issue #27: one image intake for `segment` and `propose` (grey / RGBA converted, uint16
    rescaled to 8 bits); a path is a TypeError."""
    (rgb,) = _images((40, 50))
    grey = rgb[..., 0]
    want = ij.propose(m2f["model"], np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(ij.propose(m2f["model"], grey), want)
    np.testing.assert_array_equal(ij.propose(m2f["model"], grey.astype(np.uint16) * 257), want)
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 3, np.uint8)], -1)
    np.testing.assert_array_equal(ij.propose(m2f["model"], rgba), ij.propose(m2f["model"], rgb))
    with pytest.raises(TypeError, match="load it first"):
        ij.propose(m2f["model"], "photo.jpg")


@pytest.mark.parametrize("t", [0.0, 1.0, -1.0, 2.0])
def test_propose_bad_threshold(m2f, t):
    (image,) = _images((40, 50))
    with pytest.raises(ValueError, match="threshold"):
        ij.propose(m2f["model"], image, t)


# --------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def shapes(m2f, tiny_model_dir) -> dict:
    root = m2f["root"]
    write_shapesref(root / "shapes_manual",
                    ShapesRefConfig(num_train=0, num_val=5, num_test_a=0, num_test_b=0, seed=4))
    return {"args": ["--dataset", "shapesref", "--split", "val",
                     "--manual-dir", str(root / "shapes_manual"),
                     "--data-dir", str(root / "tfds"), "--weights", str(tiny_model_dir),
                     "--no-progress", "--layer", "0"],
            "root": root, "weights": str(tiny_model_dir)}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_eval_with_mask2former_and_saved_proposals(m2f, shapes):
    root = shapes["root"]
    flags = ["--proposals", "mask2former", "--proposer-weights", str(m2f["dir"]),
             "--proposal-short-edge", "64", "--proposal-max-size", "64"]
    saved = root / "saved" / "proposals.json"
    out = root / "eval_m2f"
    assert run_eval.main([*shapes["args"], *flags, "--out", str(out),
                          "--save-proposals", str(saved)]) == 0
    samples = _lines(out / "samples.jsonl")
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["num_samples"] == len(samples) > 0 and rec["num_images"] == 5
    run_cfg = json.loads((out / "run_config.json").read_text())
    assert run_cfg["proposals"]["mask2former"] == str(m2f["dir"].resolve())
    assert run_cfg["proposals"]["rule"]["short_edge"] == 64
    assert all(-1 <= s["proposal"] < 6 for s in samples)
    assert any(s["has_candidate"] for s in samples)

    # The saved file holds every query of every image, equal to the batched proposer.
    by_image = ev.load_proposals_file(saved)
    assert sorted(by_image) == sorted({s["image_id"] for s in samples})
    sources = evi.open_split(ev.EvalConfig(dataset="shapesref", split="val",
                                          manual_dir=str(root / "shapes_manual"),
                                          data_dir=str(root / "tfds")))
    index = evi.build_index(sources.light)
    images = [sources.full[m.refs[0].index]["image"] for m in index]
    expected = ij.Proposer(m2f["model"], ProposeConfig(short_edge=64, max_size=64))(images)
    for meta, exp in zip(index, expected, strict=True):
        got = evp.decode_rles(by_image[meta.image_id], meta.hw)
        assert got.shape == exp.shape == (6, *meta.hw)
        np.testing.assert_array_equal(got, exp)

    # Reading the saved file reproduces the run sample for sample.
    out2 = root / "eval_file"
    assert run_eval.main([*shapes["args"], "--proposals", str(saved), "--out", str(out2)]) == 0
    assert _lines(out2 / "samples.jsonl") == samples

    # Resume: nothing to compute, the file is written again from the run's parts.
    saved.unlink()
    res = ev.evaluate(ev.EvalConfig(
        dataset="shapesref", split="val", manual_dir=str(root / "shapes_manual"),
        data_dir=str(root / "tfds"), weights=shapes["weights"], out=str(out),
        proposals="mask2former", proposer_weights=str(m2f["dir"]),
        propose=ProposeConfig(short_edge=64, max_size=64), save_proposals=str(saved)),
        ij.method_config(shapes["weights"], layer=0))
    assert res.computed == 0 and saved.exists()
    assert ev.load_proposals_file(saved) == by_image


def test_run_eval_bad_proposer_flags(m2f, shapes, tiny_model_dir, caplog):
    root = shapes["root"]
    cases = [
        (["--proposals", "mask2former"], "--proposer-weights"),
        (["--proposals", "mask2former", "--proposer-weights", str(tiny_model_dir)],
         "must be a Mask2Former model"),
        (["--proposals", "mask2former", "--proposer-weights", str(root / "nowhere")],
         "does not exist"),
        (["--proposals", "gt", "--proposer-weights", str(m2f["dir"])], "mask2former"),
        (["--proposals", "gt", "--save-proposals", str(root / "x.json")], "saved"),
        (["--proposals", "mask2former", "--proposer-weights", str(m2f["dir"]),
          "--proposal-threshold", "1.5"], "--proposal-threshold"),
    ]
    for k, (flags, msg) in enumerate(cases):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert run_eval.main([*shapes["args"], *flags, "--out",
                                  str(root / f"bad{k}")]) == 2, flags
        assert msg in caplog.text, (flags, caplog.text)
    # A Mask2Former where the ITM model belongs.
    caplog.clear()
    args = list(shapes["args"])
    args[args.index("--weights") + 1] = str(m2f["dir"])
    with caplog.at_level(logging.ERROR):
        assert run_eval.main([*args, "--out", str(root / "bad_weights")]) == 2
    assert f"weights {m2f['dir']} hold a Mask2Former" in caplog.text, caplog.text
    assert "needs an image-text matching (BLIP) model" in caplog.text


# --------------------------------------------------------------------------- one-image CLI
def test_segment_cli_with_proposer(m2f, tiny_model_dir, tmp_path):
    cli = importlib.import_module("iterprime_jax.segment_cli")

    image = _images((48, 64), seed=9)[0]
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "mask.png"
    saved = tmp_path / "props.json"
    rc = cli.main(["--weights", str(tiny_model_dir), "--proposer-weights", str(m2f["dir"]),
                   "--image", str(tmp_path / "photo.png"), "--text", "the red circle",
                   "--out", str(out), "--layer", "0", "--max-text-length", "16",
                   "--proposal-short-edge", "96", "--proposal-max-size", "160",
                   "--save-proposals", str(saved),
                   # the random tiny Mask2Former's masks are fragmented: admit them
                   "--max-components", "1000"])
    assert rc == 0 and out.exists()
    expected = ij.propose(m2f["model"], image, 0.35, SMALL)
    props = evp.decode_rles(ev.load_proposals_file(saved)[0], (48, 64))
    np.testing.assert_array_equal(props, expected)
    mask = np.asarray(Image.open(out)) > 0
    # the CLI's mask is the library's answer on the same inputs, and a proposal was chosen
    # (importing the CLI module `segment_cli` leaves `ij.segment` the library function)
    want = ij.segment(ij.load(tiny_model_dir), image, "the red circle", expected,
                      ij.method_config(tiny_model_dir, layer=0, max_text_length=16,
                                       max_components=1000))
    assert want.proposal_index >= 0 and want.mask.any()
    np.testing.assert_array_equal(mask, want.mask)
    np.testing.assert_array_equal(mask, expected[want.proposal_index])
    # both proposal sources at once, or a BLIP model as proposer: clear errors
    assert cli.main(["--weights", str(tiny_model_dir), "--proposer-weights", str(m2f["dir"]),
                     "--proposals", str(saved), "--image", str(tmp_path / "photo.png"),
                     "--text", "x", "--out", str(out)]) == 2
    assert cli.main(["--weights", str(tiny_model_dir), "--proposer-weights",
                     str(tiny_model_dir), "--image", str(tmp_path / "photo.png"),
                     "--text", "x", "--out", str(out)]) == 2


# --------------------------------------------------------------------------- sharding
SHARDED_SCRIPT = """
import sys, numpy as np, jax
import iterprime_jax as ij
from iterprime_jax.models.mask2former.preprocess import ProposeConfig
from iterprime_jax.models.mask2former.propose import propose_step
assert jax.local_device_count() == 2, jax.local_devices()
with np.load(sys.argv[2]) as z:
    images = [z[f"arr_{k}"] for k in range(len(z.files))]
p = ij.Proposer(ij.load(sys.argv[1]), ProposeConfig(short_edge=96, max_size=160))
assert len(p.devices) == 2
np.savez(sys.argv[3], *p(images))
"""


def test_proposer_sharded_over_two_devices(m2f, tmp_path):
    """The image axis sharded over 2 host devices gives the 1-device masks."""
    import os
    import subprocess
    import sys

    images = _images((60, 80), (60, 80), (61, 79), seed=11)  # one bucket, batch 3 -> 4
    np.savez(tmp_path / "in.npz", *images)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(m2f["dir"]),
                           str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as z:
        sharded = [z[f"arr_{k}"] for k in range(len(images))]
    single = ij.Proposer(m2f["model"], SMALL, devices=[jax.local_devices()[0]])(images)
    for a, b in zip(sharded, single, strict=True):
        assert a.shape == b.shape and (a == b).mean() >= 0.9999
