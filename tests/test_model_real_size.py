"""blip-itm-base-coco architecture (ViT-B/16@384 + BERT-base), random weights: conversion
coverage and logits parity. Slow (~1-2 min on 2 cores) but part of CI."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import iterprime_jax as ij
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.models.convert import read_hf_state_dict

from .torch_ref import build_model, run_torch


@pytest.mark.slow
def test_base_coco_architecture_conversion_and_logits(tmp_path):
    from transformers import BlipConfig as HFBlipConfig

    hf = HFBlipConfig()  # defaults are blip-itm-base-coco's architecture
    assert hf.vision_config.image_size == 384 and hf.text_config.num_hidden_layers == 12
    model = build_model(hf, seed=3)
    model.save_pretrained(str(tmp_path / "hf"))
    del model
    dst = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "flax")
    cfg = ij.BlipConfig.load(dst / "blip_config.json")
    assert cfg.vision.grid == (24, 24) and cfg.text.vocab_size == 30524

    from iterprime_jax.models.convert import restore_params
    params = restore_params(dst, cfg)
    n_flax = len(jax.tree_util.tree_leaves(params))
    state = read_hf_state_dict(tmp_path / "hf")
    assert n_flax == len(state)  # every tensor mapped, nothing dropped
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == sum(
        v.size for v in state.values())

    from transformers import BlipForImageTextRetrieval
    torch_model = BlipForImageTextRetrieval.from_pretrained(str(tmp_path / "hf")).eval()
    rng = np.random.default_rng(0)
    pix = rng.normal(size=(1, 384, 384, 3)).astype(np.float32)
    ids = rng.integers(1000, 30000, size=(2, 12)).astype(np.int32)
    ids[:, 0] = 101
    am = np.ones_like(ids)
    am[1, 8:] = 0
    pix2 = np.repeat(pix, 2, axis=0)
    ref = run_torch(torch_model, pix2, ids, am)
    ours = np.asarray(jax.jit(ij.itm_logits, static_argnums=1)(params, cfg, pix2, ids, am))
    assert np.abs(ref["logits"]).max() > 1e-2
    np.testing.assert_allclose(ours, ref["logits"], atol=1e-4, rtol=0)
