"""Numerical parity of the Flax Mask2Former (Swin) port with HF PyTorch, through the converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test dependency ('.[test]'): a missing torch is an error, not a skip
import transformers

from iterprime_jax.models.checkpoint import CheckpointError
from iterprime_jax.models.mask2former import (
    Mask2FormerConfig,
    mask2former_forward,
    mask2former_forward_jit,
)
from iterprime_jax.models.mask2former.convert import convert_state_dict

TOL = 1e-4

# name -> (HF Swin kwargs, HF Mask2Former kwargs, input (H, W))
CONFIGS = {
    # 70x90 -> patch grid 18x23 -> 9x12 -> 5x6 -> 3x3: window 3 does not divide 23, 5 or 6;
    # the last map equals the window (shifted mask on a single window).
    "nonsquare_w3": (dict(embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4],
                          window_size=3),
                     dict(feature_size=32, mask_feature_size=32, hidden_dim=32,
                          num_attention_heads=4, num_queries=6, decoder_layers=4),
                     (70, 90)),
    # window 4 larger than the last maps; projection convs (feature_size != hidden_dim);
    # pre-norm decoder; odd input size with the patch not dividing it.
    "prenorm_proj_w4": (dict(embed_dim=24, depths=[2, 1, 2, 2], num_heads=[2, 3, 4, 6],
                             window_size=4),
                        dict(feature_size=64, mask_feature_size=24, hidden_dim=48,
                             num_attention_heads=4, num_queries=5, decoder_layers=5,
                             pre_norm=True, dim_feedforward=40),
                        (61, 47)),
    # three backbone levels only (no FPN lateral level: mask features at the finest level)
    "three_levels": (dict(embed_dim=16, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=5,
                          out_features=["stage1", "stage2", "stage3"]),
                     dict(feature_size=32, mask_feature_size=32, hidden_dim=32,
                          num_attention_heads=2, num_queries=7, decoder_layers=3,
                          feature_strides=[4, 8, 16]),
                     (52, 76)),
}


def _hf_model(name: str, seed: int):
    swin_kw, m2f_kw, _ = CONFIGS[name]
    swin_kw = dict(swin_kw)
    swin_kw.setdefault("out_features", [f"stage{i + 1}" for i in range(len(swin_kw["depths"]))])
    backbone = transformers.SwinConfig(image_size=64, drop_path_rate=0.0, **swin_kw)
    m2f_kw = dict(dict(encoder_feedforward_dim=48, dim_feedforward=64, encoder_layers=2,
                       num_labels=9), **m2f_kw)
    config = transformers.Mask2FormerConfig(backbone_config=backbone, **m2f_kw)
    torch.manual_seed(seed)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)

    def randn(shape, std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=gen)

    with torch.no_grad():
        for module in model.modules():
            # a well-conditioned random model: activations stay O(1) through every layer
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(randn(module.weight.shape, fan_in ** -0.5))
                if module.bias is not None:
                    module.bias.copy_(randn(module.bias.shape, 0.1))
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_weight.copy_(randn(module.in_proj_weight.shape,
                                                  module.embed_dim ** -0.5))
                module.in_proj_bias.copy_(randn(module.in_proj_bias.shape, 0.1))
            # random affine so that every LayerNorm / GroupNorm matters
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                module.weight.copy_(1 + randn(module.weight.shape, 0.3))
                module.bias.copy_(randn(module.bias.shape, 0.2))
        for key, p in model.named_parameters():
            if key.endswith("relative_position_bias_table"):  # zero at init
                p.copy_(randn(p.shape, 1.0))
            if "sampling_offsets.bias" in key:  # offsets of a few pixels, some off the map
                p.mul_(1.5)
    return model, config


def _torch_outputs(model, pixels: np.ndarray):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return out.class_queries_logits.numpy(), out.masks_queries_logits.numpy()


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request):
    model, hf_config = _hf_model(request.param, seed=len(request.param))
    config = Mask2FormerConfig.from_hf_dict(hf_config.to_dict())
    params = convert_state_dict(_state_dict(model), config)
    return request.param, model, config, params


def test_config_from_hf_dict(converted):
    name, model, config, _ = converted
    hf = model.config
    assert config.backbone.depths == tuple(hf.backbone_config.depths)
    assert config.backbone.window_size == hf.backbone_config.window_size
    assert config.backbone.out_features == tuple(hf.backbone_config.out_features)
    assert config.num_queries == hf.num_queries and config.num_labels == hf.num_labels
    assert config.pre_norm == hf.pre_norm
    hash(config)  # static under jit


def test_class_and_mask_logits_match_torch(converted):
    name, model, config, params = converted
    h, w = CONFIGS[name][2]
    pixels = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    want_cls, want_mask = _torch_outputs(model, pixels)
    got_cls, got_mask = mask2former_forward_jit(params, config, pixels)
    got_cls, got_mask = np.asarray(got_cls), np.asarray(got_mask)
    assert got_cls.shape == want_cls.shape == (2, config.num_queries, config.num_labels + 1)
    assert got_mask.shape == want_mask.shape == (2, config.num_queries, -(-h // 4), -(-w // 4))
    # the outputs are not degenerate: masks of both signs, queries that differ
    assert (want_mask > 0).mean() > 0.02 and (want_mask < 0).mean() > 0.02
    assert np.ptp(want_cls, axis=1).min() > 1e-2
    np.testing.assert_allclose(got_cls, want_cls, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(got_mask, want_mask, atol=TOL, rtol=TOL)


def test_bfloat16_compute_and_batch_independence():
    """bf16 compute stays close to float32; a sample's outputs do not depend on its batch."""
    name = "three_levels"
    model, hf_config = _hf_model(name, seed=len(name))
    config = Mask2FormerConfig.from_hf_dict(hf_config.to_dict())
    params = convert_state_dict(_state_dict(model), config)
    h, w = CONFIGS[name][2]
    pixels = np.random.default_rng(2).normal(size=(2, h, w, 3)).astype(np.float32)
    cls32, mask32 = (np.asarray(a) for a in mask2former_forward_jit(params, config, pixels))
    cls1, mask1 = (np.asarray(a) for a in mask2former_forward_jit(params, config, pixels[1:]))
    np.testing.assert_allclose(cls1, cls32[1:], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(mask1, mask32[1:], atol=TOL, rtol=TOL)
    cls16, mask16 = mask2former_forward_jit(params, config.replace(dtype=jnp.bfloat16), pixels)
    assert cls16.dtype == mask16.dtype == np.float32
    # bf16 keeps ~3 significant digits and masked attention flips some borderline positions,
    # so compare loosely: same signs almost everywhere, strongly correlated logits
    mask16, cls16 = np.asarray(mask16), np.asarray(cls16)
    assert np.mean(np.sign(mask16) == np.sign(mask32)) > 0.95
    assert np.median(np.abs(mask16 - mask32)) < 0.02 * np.abs(mask32).max()
    assert np.corrcoef(mask16.ravel(), mask32.ravel())[0, 1] > 0.98
    assert np.corrcoef(cls16.ravel(), cls32.ravel())[0, 1] > 0.98


# --------------------------------------------------------------------------- conversion errors
def test_missing_key_is_named(converted):
    name, model, config, _ = converted
    sd = _state_dict(model)
    key = "model.transformer_module.decoder.layers.0.cross_attn.in_proj_weight"
    del sd[key]
    with pytest.raises(CheckpointError, match="missing") as e:
        convert_state_dict(sd, config)
    assert "transformer_module/decoder/layers_0/cross_attn/in_proj_weight" in str(e.value)


def test_wrong_shape_and_unexpected_key_are_named(converted):
    name, model, config, _ = converted
    sd = _state_dict(model)
    key = "model.pixel_level_module.decoder.level_embed"
    sd[key] = np.zeros((sd[key].shape[0] + 1, sd[key].shape[1]), np.float32)
    sd["model.extra_head.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError) as e:
        convert_state_dict(sd, config)
    msg = str(e.value)
    assert "mis-shaped" in msg and key in msg
    assert "unknown checkpoint keys" in msg and "model.extra_head.weight" in msg
    assert "missing" not in msg  # the mis-shaped tensor is reported once, as mis-shaped


def test_checkpoint_of_another_architecture():
    from transformers import BlipConfig, BlipForImageTextRetrieval

    blip = BlipConfig(vision_config=dict(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         image_size=32, patch_size=8),
                      text_config=dict(hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=4,
                                       encoder_hidden_size=32, vocab_size=100))
    sd = _state_dict(BlipForImageTextRetrieval(blip))
    config = Mask2FormerConfig.from_hf_dict(_hf_model("nonsquare_w3", 0)[1].to_dict())
    with pytest.raises(CheckpointError) as e:
        convert_state_dict(sd, config)
    assert "vision_model.embeddings.patch_embedding.weight" in str(e.value)
    assert "model parameters missing" in str(e.value)
    with pytest.raises(ValueError, match="model_type 'blip'"):
        Mask2FormerConfig.from_hf_dict(blip.to_dict())


def test_bad_pixel_values_are_named(converted):
    name, model, config, params = converted
    with pytest.raises(ValueError, match="pixel_values"):
        mask2former_forward(params, config, np.zeros((1, 32, 32, 4), np.float32))
    with pytest.raises(ValueError, match="pixel_values"):
        mask2former_forward(params, config, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="pixel_values"):
        mask2former_forward(params, config, np.zeros((1, 32, 32, 3), np.uint8))


# --------------------------------------------------------------------------- convert + load
def test_convert_and_load_through_files(tmp_path):
    """save_pretrained (the published key names) -> convert_hf_checkpoint -> load -> forward."""
    import iterprime_jax as ij
    from iterprime_jax.models.conversion import convert_hf_checkpoint

    name = "nonsquare_w3"
    model, _ = _hf_model(name, seed=len(name))
    model.save_pretrained(tmp_path / "hf")
    dst = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "flax")
    assert (dst / "mask2former_config.json").exists() and not (dst / "blip_config.json").exists()
    loaded = ij.load(dst)
    assert isinstance(loaded, ij.ProposerModel) and isinstance(loaded.config, Mask2FormerConfig)
    assert loaded.config == Mask2FormerConfig.from_hf_dict(model.config.to_dict())
    h, w = CONFIGS[name][2]
    pixels = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    want_cls, want_mask = _torch_outputs(model, pixels)
    got_cls, got_mask = mask2former_forward_jit(loaded.params, loaded.config, pixels)
    np.testing.assert_allclose(np.asarray(got_cls), want_cls, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(got_mask), want_mask, atol=TOL, rtol=TOL)
    assert ij.load(dst, dtype="bfloat16").config.dtype == jnp.bfloat16


def test_convert_rejects_unknown_model_type_and_broken_checkpoint(tmp_path):
    import json

    from iterprime_jax.models.conversion import convert_hf_checkpoint

    name = "three_levels"
    model, _ = _hf_model(name, seed=len(name))
    src = tmp_path / "hf"
    model.save_pretrained(src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "maskformer"}))
    with pytest.raises(CheckpointError, match="model_type 'maskformer' is not supported"):
        convert_hf_checkpoint(src, tmp_path / "out")
    # a Mask2Former config.json whose backbone is deeper than the weights: names the keys
    deeper = dict(cfg["backbone_config"], depths=[1, 1, 3])
    (src / "config.json").write_text(json.dumps({**cfg, "backbone_config": deeper}))
    with pytest.raises(CheckpointError, match=r"layers_2/blocks_2"):
        convert_hf_checkpoint(src, tmp_path / "out")


# --------------------------------------------------------------------------- configs, real size
def test_config_round_trip_preprocessor_and_errors(tmp_path):
    hf = _hf_model("three_levels", 0)[1].to_dict()
    pre = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    config = Mask2FormerConfig.from_hf_dict(hf, pre)
    np.testing.assert_allclose(config.image_mean, (123.675, 116.28, 103.53), rtol=1e-6)
    np.testing.assert_allclose(config.image_std, (58.395, 57.12, 57.375), rtol=1e-6)
    config.save(tmp_path / "c.json")
    loaded = Mask2FormerConfig.load(tmp_path / "c.json")  # JSON lists come back as tuples
    assert loaded == config and hash(loaded) == hash(config)
    assert config.num_fpn_levels == 0 and Mask2FormerConfig().num_fpn_levels == 1
    two = dict(hf, backbone_config=dict(hf["backbone_config"], out_features=["stage2",
                                                                             "stage3"]))
    with pytest.raises(ValueError, match="needs >= 3 backbone feature maps"):
        Mask2FormerConfig.from_hf_dict(two)
    with pytest.raises(ValueError, match="only 'swin' backbones"):
        Mask2FormerConfig.from_hf_dict(dict(hf, backbone_config={"model_type": "resnet"}))


def test_swin_large_coco_panoptic_key_table():
    """The published Swin-L COCO-panoptic architecture converts key for key (shapes only:
    the HF model is built on the meta device, tensors are zero-stride views)."""
    backbone = transformers.SwinConfig(image_size=384, embed_dim=192, depths=[2, 2, 18, 2],
                                       num_heads=[6, 12, 24, 48], window_size=12,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = transformers.Mask2FormerConfig(backbone_config=backbone, num_queries=200,
                                        num_labels=133)
    with torch.device("meta"):
        model = transformers.Mask2FormerForUniversalSegmentation(hf)
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape))
             for k, v in model.state_dict().items()}
    config = Mask2FormerConfig.from_hf_dict(hf.to_dict())
    params = convert_state_dict(state, config)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    n_torch = sum(int(np.prod(v.shape)) for k, v in state.items()
                  if k != "criterion.empty_weight" and "swin.layernorm" not in k)
    assert n_params == n_torch > 200_000_000
