"""Preprocessing parity with HF BlipImageProcessor, tokenisation, and bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import iterprime_jax as ij
from iterprime_jax.models.blip.modeling import init_params
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.models.convert import CheckpointError
from iterprime_jax.shipped import VOCAB as SHIPPED_VOCAB

DATA = Path(__file__).parent / "data"


def _cfg(size: int = 384) -> ij.BlipConfig:
    return ij.BlipConfig(vision=ij.VisionConfig(image_size=size))


@pytest.mark.parametrize("shape", [(480, 640), (427, 640), (640, 360), (384, 384), (50, 70)])
def test_preprocess_matches_hf_image_processor(shape):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    rng = np.random.default_rng(shape[0])
    img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    hf = BlipImageProcessorPil(size={"height": 384, "width": 384})
    ref = hf(img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = ij.preprocess_image(img, _cfg())
    assert ours.shape == (384, 384, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_preprocess_real_photo_matches_hf():
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    img = np.asarray(Image.open(DATA / "quokka.jpg").convert("RGB"))
    ref = BlipImageProcessorPil()(img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(ij.preprocess_image(img, _cfg()), ref, atol=1e-3, rtol=0)


def test_grayscale_and_rgba_accepted_as_rgb():
    gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, -1)
    np.testing.assert_array_equal(ij.preprocess_image(gray, _cfg(32)),
                                  ij.preprocess_image(rgb, _cfg(32)))
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(ij.preprocess_image(rgba, _cfg(32)),
                                  ij.preprocess_image(rgb, _cfg(32)))


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "shape"),
])
def test_bad_images_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ij.preprocess_image(bad, _cfg(32))


def test_tokenize_real_ids_and_empty_list():
    from transformers import BertTokenizer

    tok = BertTokenizer(str(SHIPPED_VOCAB))
    ids, am = ij.tokenize(tok, ["there is a giraffe on the right"], max_length=12)
    n = len(tok.tokenize("there is a giraffe on the right")) + 2
    assert ids.shape == (1, 12) and am.sum() == n
    assert ids[0, :4].tolist() == [101, 2045, 2003, 1037]  # [CLS] there is a
    assert ids[0, n - 1] == 102 and ids[0, n:].tolist() == [0] * (12 - n)
    assert tok.unk_token_id not in ids[0].tolist()
    with pytest.raises(ValueError, match="empty"):
        ij.tokenize(tok, [], max_length=8)
    with pytest.raises(ValueError, match="empty"):
        ij.tokenize(tok, ["  "], max_length=8)


def test_itm_logits_rejects_bad_pixels_and_empty_text():
    cfg = ij.BlipConfig(
        vision=ij.VisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2),
        text=ij.TextConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=16))
    params = init_params(cfg, jax.random.PRNGKey(0))
    ids = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="NHWC"):
        ij.itm_logits(params, cfg, np.zeros((1, 3, 16, 16), np.float32), ids, ids)
    with pytest.raises(ValueError, match="float"):
        ij.itm_logits(params, cfg, np.zeros((1, 16, 16, 3), np.uint8), ids, ids)
    with pytest.raises(ValueError, match="empty"):
        ij.itm_logits(params, cfg, np.zeros((1, 16, 16, 3), np.float32),
                      np.zeros((1, 0), np.int32), np.zeros((1, 0), np.int32))


def test_checkpoint_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": {}, "text_config": {}}))
    with pytest.raises(CheckpointError, match="no weights"):
        convert_hf_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(CheckpointError, match="config.json"):
        convert_hf_checkpoint(tmp_path / "out", tmp_path / "out2")
    with pytest.raises(CheckpointError, match="does not exist"):
        ij.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="blip_config.json"):
        ij.load(tmp_path)


def test_key_mismatched_checkpoint_names_the_keys(tmp_path):
    from safetensors.numpy import load_file, save_file

    from .torch_ref import build_model, hf_config

    model = build_model(hf_config(), seed=0)
    model.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / "model.safetensors"))
    state["text_encoder.encoder.layer.0.crossattention.self.bogus.weight"] = np.zeros((2, 2),
                                                                                      np.float32)
    del state["itm_head.weight"]
    state["vision_model.post_layernorm.bias"] = np.zeros(7, np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        convert_hf_checkpoint(tmp_path, tmp_path / "out")
    text = str(e.value)
    assert "crossattention.self.bogus.weight" in text
    assert "itm_head/kernel" in text
    assert "vision_model.post_layernorm.bias" in text


def test_cli_converts_and_load_roundtrips(tmp_path):
    import shutil

    from iterprime_jax.models.convert import main

    from .torch_ref import build_model, hf_config

    model = build_model(hf_config(), seed=0)
    model.save_pretrained(str(tmp_path / "hf"))
    shutil.copy(SHIPPED_VOCAB, tmp_path / "hf" / "vocab.txt")
    main([str(tmp_path / "hf"), str(tmp_path / "out")])
    m = ij.load(tmp_path / "out")
    assert m.tokenizer.convert_tokens_to_ids("dog") != m.tokenizer.unk_token_id
    assert m.config.vision.grid == (4, 4)


def test_safetensors_bf16_and_sharded(tmp_path):
    """Sharded safetensors (model.safetensors.index.json) with a bf16 tensor, read through the
    safetensors package; a broken shard is a CheckpointError naming the file."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from iterprime_jax.models.checkpoint import read_hf_state_dict

    a = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    b = np.linspace(0, 1, 4, dtype=np.float32)
    shards = {"model-00001-of-00002.safetensors": {"a": a},
              "model-00002-of-00002.safetensors": {"b": b}}
    for name, tensors in shards.items():
        save_file(tensors, str(tmp_path / name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, t in shards.items() for k in t}}))
    sd = read_hf_state_dict(tmp_path)
    assert sorted(sd) == ["a", "b"]
    assert sd["a"].dtype == ml_dtypes.bfloat16 and sd["a"].shape == (2, 3)
    np.testing.assert_array_equal(sd["a"].astype(np.float32), a.astype(np.float32))
    np.testing.assert_array_equal(sd["b"], b)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{junk")
    with pytest.raises(CheckpointError, match="cannot read safetensors file .*00002"):
        read_hf_state_dict(tmp_path)


DAMAGED_SCRIPT = """
import sys
import iterprime_jax as ij
try:
    ij.load(sys.argv[1])
except ij.CheckpointError as e:
    print('ERR', e)
"""


def test_damaged_params_are_called_damaged_without_event_loop_noise(tmp_path):
    """A truncated array file is damage (not a config mismatch), reported once: no
    'Event loop is closed' tracebacks from the reads still in flight."""
    import shutil
    import subprocess
    import sys

    from .conftest import tiny_blip_config, write_tiny_model

    good = write_tiny_model(tmp_path / "good")
    # each data file of the OCDBT store cut to 100 bytes in turn; the ones that hold arrays
    # make the load fail (how orbax spreads the arrays over files varies from run to run, so
    # the number of such files is not fixed: at least one, each reported as damage)
    files = [f for f in (good / "params").rglob("ocdbt.process_0/d/*") if f.stat().st_size > 1000]
    damaged = 0
    for k, f in enumerate(files):
        bad = tmp_path / f"bad{k}"
        shutil.copytree(good, bad)
        (bad / f.relative_to(good)).write_bytes(f.read_bytes()[:100])
        done = subprocess.run([sys.executable, "-c", DAMAGED_SCRIPT, str(bad)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Event loop is closed" not in done.stderr and "Traceback" not in done.stderr
        if done.stdout.startswith("ERR"):
            damaged += 1
            assert done.stdout.startswith(f"ERR params at {bad / 'params'} are damaged"), (
                done.stdout)
            assert "do not match" not in done.stdout
    assert damaged >= 1
    # a checkpoint of another size is a mismatch, named by its first differing array
    other = tmp_path / "other"
    shutil.copytree(good, other)
    cfg = tiny_blip_config()
    (other / "blip_config.json").write_text(
        (good / "blip_config.json").read_text().replace(
            f'"intermediate_size": {cfg.vision.intermediate_size}', '"intermediate_size": 48',
            1))
    with pytest.raises(CheckpointError, match=r"do not match blip_config.json: .* has shape"):
        ij.load(other)
