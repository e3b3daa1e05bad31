"""ALBEF ITM: parity with a PyTorch reference composed from transformers' modules
(tests/albef_ref.py), `ALBEF.pth` conversion (CLI, skipped entries, refusals), loading, and the
authors' tokenisation.

Tolerances: activations and logits are O(1) (|x| <= ~4 here), float32 epsilon is 1.2e-7, and
each quantity passes through < 40 matmuls / LayerNorms / softmaxes whose rounding errors add up
to ~1e-6 (measured: <= 1e-6 on these configs); 1e-4 leaves two orders of margin while still
catching any wrong weight, mask or layer order (those change values at O(1e-2) or more).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import iterprime_jax as ij
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.language import encode_expression, load_spacy
from iterprime_jax.models.albef.config import AlbefConfig, AlbefTextConfig
from iterprime_jax.models.albef.convert import (
    convert_albef_state_dict,
    read_pth,
    resize_pos_embed,
)
from iterprime_jax.models.blip.modeling import encode_image, match_from_embeds
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.models.convert import convert_albef_checkpoint, main
from iterprime_jax.models.keytable import flatten
from tests.albef_ref import Sizes, TorchAlbef, random_albef_state_dict, save_pth
from tests.conftest import VOCAB  # bert-base-uncased (the real vocabulary)

TOL = 1e-4
# odd configs: fusion layer not in the middle, grids 5x5 and 3x3, widths not 768
SIZES = (Sizes(), Sizes(image=48, patch=16, v_width=16, v_depth=1, v_heads=2, t_width=12,
                        t_layers=4, t_heads=3, t_inter=20, fusion=3))


def text_config(s: Sizes) -> AlbefTextConfig:
    return AlbefTextConfig(vocab_size=s.vocab, hidden_size=s.t_width, intermediate_size=s.t_inter,
                           num_hidden_layers=s.t_layers, num_attention_heads=s.t_heads,
                           max_position_embeddings=s.max_pos, encoder_hidden_size=s.v_width,
                           fusion_layer=s.fusion)


def bert_config_json(s: Sizes, path: Path, **change) -> Path:
    """ALBEF's config_bert.json format for sizes `s`."""
    d = {"architectures": ["BertForMaskedLM"], "hidden_act": "gelu", "hidden_size": s.t_width,
         "intermediate_size": s.t_inter, "layer_norm_eps": 1e-12,
         "max_position_embeddings": s.max_pos, "model_type": "bert",
         "num_attention_heads": s.t_heads, "num_hidden_layers": s.t_layers, "pad_token_id": 0,
         "type_vocab_size": 2, "vocab_size": s.vocab, "fusion_layer": s.fusion,
         "encoder_width": s.v_width, **change}
    path.write_text(json.dumps(d))
    return path


def cli_args(s: Sizes, pth: Path, dst: Path, bert: Path) -> list[str]:
    return [str(pth), str(dst), "--bert-config", str(bert), "--image-res", str(s.image),
            "--patch-size", str(s.patch), "--vision-width", str(s.v_width), "--vision-depth",
            str(s.v_depth), "--vision-heads", str(s.v_heads)]


def inputs(s: Sizes, seed: int = 1):
    rng = np.random.default_rng(seed)
    pix = rng.normal(size=(3, s.image, s.image, 3)).astype(np.float32)
    ids = rng.integers(1000, 8000, size=(3, 9)).astype(np.int32)
    ids[:, 0] = 101
    am = np.ones((3, 9), np.int32)
    am[1, 6:] = 0
    am[2, 4:] = 0
    mask = (rng.random((3, s.grid ** 2)) > 0.35).astype(np.int32)
    return pix, ids, am, mask


@pytest.fixture(scope="module", params=range(len(SIZES)))
def pair(request):
    s = SIZES[request.param]
    sd = random_albef_state_dict(s, seed=request.param)
    config, params = convert_albef_state_dict(sd, "synthetic", text_config(s), s.image, s.patch,
                                              s.v_width, s.v_depth, s.v_heads)
    return s, TorchAlbef(s, sd), config, params


@pytest.mark.parametrize("masked", [False, True])
def test_itm_cross_attention_and_gradients_match_torch(pair, masked):
    s, ref, config, params = pair
    pix, ids, am, mask = inputs(s)
    image_mask = mask if masked else None
    emb_t = ref.encode_image(pix)
    emb_j = encode_image(params, config, jnp.asarray(pix))
    np.testing.assert_allclose(np.asarray(emb_j), emb_t.detach().numpy(), atol=TOL, rtol=0)
    logits = ij.itm_logits(params, config, jnp.asarray(pix), jnp.asarray(ids), jnp.asarray(am),
                           None if image_mask is None else jnp.asarray(image_mask))
    _, crosses = match_from_embeds(params, config, emb_j, jnp.asarray(ids), jnp.asarray(am),
                                   None if image_mask is None else jnp.asarray(image_mask))
    assert all(c is None for c in crosses[:s.fusion])
    for layer in (s.fusion, s.t_layers - 1):
        out = ref.match(emb_t, ids, am, image_mask, grad_layer=layer)
        np.testing.assert_allclose(np.asarray(logits), out["logits"], atol=TOL, rtol=0)
        assert sorted(out["cross"]) == list(range(s.fusion, s.t_layers))
        for i, c in out["cross"].items():
            np.testing.assert_allclose(np.asarray(crosses[i]), c, atol=TOL, rtol=0)
        cam = ij.cross_attention_gradcam(params, config, jnp.asarray(pix), jnp.asarray(ids),
                                         jnp.asarray(am), layer=layer,
                                         image_mask=None if image_mask is None
                                         else jnp.asarray(image_mask))
        g = s.grid
        want_grad = out["grad"][..., 1:].reshape(*out["grad"].shape[:-1], g, g)
        want_attn = out["cross"][layer][..., 1:].reshape(want_grad.shape)
        assert np.abs(want_grad).max() > 1e-2  # the gradient is not vacuous
        np.testing.assert_allclose(np.asarray(cam.grad), want_grad, atol=TOL, rtol=0)
        np.testing.assert_allclose(np.asarray(cam.attn), want_attn, atol=TOL, rtol=0)
        if masked:  # hidden patches get no attention
            hidden = (mask == 0).reshape(3, 1, 1, g, g) & np.ones_like(want_attn, bool)
            assert np.all(np.asarray(cam.attn)[hidden] == 0)


def test_gradcam_below_fusion_layer_names_it(pair):
    s, _, config, params = pair
    pix, ids, am, _ = inputs(s)
    with pytest.raises(ValueError, match=f"fusion_layer={s.fusion}"):
        ij.cross_attention_gradcam(params, config, jnp.asarray(pix), jnp.asarray(ids),
                                   jnp.asarray(am), layer=s.fusion - 1)


def test_convert_cli_skips_training_entries_and_loads(tmp_path):
    s = SIZES[0]
    sd = random_albef_state_dict(s, seed=5, extras=True)
    assert any(k.startswith("visual_encoder_m.") for k in sd) and "image_queue" in sd
    pth = tmp_path / "ALBEF.pth"
    save_pth(sd, pth)
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    dst = tmp_path / "albef"
    main(cli_args(s, pth, dst, bert))
    model = ij.load(dst)
    assert isinstance(model.config, AlbefConfig)
    assert model.config.text.fusion_layer == s.fusion and model.config.vision.grid == (5, 5)
    assert model.config.vision.layer_norm_eps == 1e-6
    # every parameter is the checkpoint's own tensor (not the momentum copy, not random)
    flat = flatten(model.params)
    np.testing.assert_array_equal(
        flat[("visual_encoder", "blocks_1", "attn", "qkv", "kernel")],
        sd["visual_encoder.blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(
        flat[("text_encoder", "bert", "encoder", f"layer_{s.fusion}", "crossattention", "self",
              "key", "kernel")],
        sd[f"text_encoder.bert.encoder.layer.{s.fusion}.crossattention.self.key.weight"].T)
    method = json.loads((dst / "method.json").read_text())
    assert method == {"layer": min(8, s.t_layers - 1), "use_template": True,
                      "template": "there is a {}", "append_sep": False, "authors_code": True,
                      "parser": "stanza", "max_text_length": s.max_pos}
    mc = ij.method_config(model)
    assert mc.authors_code and mc.keep_rejected and not mc.append_sep
    assert mc.parser == "stanza" and mc.max_text_length == s.max_pos
    assert (dst / "vocab.txt").read_bytes() == VOCAB.read_bytes()
    assert model.tokenizer.convert_tokens_to_ids(["dog"]) == [3899]
    pix, ids, am, _ = inputs(s)
    ref = TorchAlbef(s, sd)
    want = ref.match(ref.encode_image(pix), ids, am)["logits"]
    got = ij.itm_logits(model.params, model.config, jnp.asarray(pix), jnp.asarray(ids),
                        jnp.asarray(am))
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)
    # bare state dict (no "model" wrapper), fine-tuned naming (text_encoder.X without bert.)
    bare = {(k.replace("text_encoder.bert.", "text_encoder.", 1)): v for k, v in sd.items()}
    save_pth(bare, tmp_path / "bare.pth", wrap=False)
    main(cli_args(s, tmp_path / "bare.pth", tmp_path / "bare", bert))
    again = ij.load(tmp_path / "bare")
    for k, v in flatten(again.params).items():
        np.testing.assert_array_equal(v, flat[k])


def _refused(tmp_path: Path, args: list[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_key_refused_and_nothing_written(tmp_path):
    s = SIZES[0]
    sd = random_albef_state_dict(s)
    gone = (f"text_encoder.bert.encoder.layer.{s.t_layers - 1}.crossattention.output."
            "LayerNorm.weight")
    del sd[gone]
    save_pth(sd, tmp_path / "ALBEF.pth")
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    dst = tmp_path / "out"
    _refused(tmp_path, cli_args(s, tmp_path / "ALBEF.pth", dst, bert), gone, "ALBEF.pth")
    assert not dst.exists()
    assert not list(tmp_path.glob("out.partial-*"))


def test_bad_inputs_refused(tmp_path):
    s = SIZES[0]
    sd = random_albef_state_dict(s, extras=False)
    pth = tmp_path / "ALBEF.pth"
    save_pth(sd, pth)
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    dst = tmp_path / "out"
    # a bare ViT state dict
    vit = {k.replace("visual_encoder.", ""): v for k, v in sd.items()
           if k.startswith("visual_encoder.")}
    save_pth(vit, tmp_path / "vit.pth", wrap=False)
    _refused(tmp_path, cli_args(s, tmp_path / "vit.pth", dst, bert), "vit.pth",
             "not an ALBEF checkpoint")
    # --bert-config disagreeing with the tensors
    bad_bert = bert_config_json(s, tmp_path / "bad_bert.json", num_hidden_layers=s.t_layers + 1)
    _refused(tmp_path, cli_args(s, pth, dst, bad_bert), "bad_bert.json",
             f"num_hidden_layers={s.t_layers + 1}", f"num_hidden_layers={s.t_layers}")
    bad_fusion = bert_config_json(s, tmp_path / "bad_fusion.json", fusion_layer=0)
    _refused(tmp_path, cli_args(s, pth, dst, bad_fusion), "bad_fusion.json", "fusion_layer=0",
             f"fusion_layer={s.fusion}")
    not_albef = tmp_path / "bert_base.json"
    not_albef.write_text(json.dumps({"hidden_size": s.t_width, "num_hidden_layers": 5}))
    _refused(tmp_path, cli_args(s, pth, dst, not_albef), "bert_base.json", "fusion_layer")
    big_vocab = tmp_path / "big_vocab.txt"
    big_vocab.write_text("".join(f"w{i}\n" for i in range(s.vocab + 1)))
    _refused(tmp_path, cli_args(s, pth, dst, bert) + ["--vocab", str(big_vocab)],
             "big_vocab.txt", str(s.vocab + 1), str(s.vocab))
    args = cli_args(s, pth, dst, bert)
    args[args.index("--vision-width") + 1] = "32"
    _refused(tmp_path, args, "--vision-width 32", str(s.v_width))
    # grid mismatch: the checkpoint's 5x5 grid (40 px) against the default 256 px
    args = cli_args(s, pth, dst, bert)
    del args[args.index("--image-res"):args.index("--image-res") + 2]
    _refused(tmp_path, args, "ALBEF.pth", "5x5", "40 px", "256 px")
    # a BLIP (HF) directory where a .pth is expected
    hf = tmp_path / "blip_hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "blip"}))
    _refused(tmp_path, cli_args(s, hf, dst, bert), "blip_hf", "directory", "--bert-config")
    with pytest.raises(ij.CheckpointError, match="Hugging Face checkpoint"):
        convert_albef_checkpoint(hf, dst)
    # ... and the reverse: a .pth where a directory is expected
    with pytest.raises(ij.CheckpointError, match="ALBEF.pth is a file"):
        convert_hf_checkpoint(pth, dst)
    with pytest.raises(ij.CheckpointError, match="is a file"):
        ij.load(pth)
    assert not dst.exists()


def test_image_res_resizes_pos_embed_like_torch(tmp_path):
    s = SIZES[0]  # 5x5 grid at 40 px -> 7x7 at 56 px
    sd = random_albef_state_dict(s, extras=False)
    save_pth(sd, tmp_path / "ALBEF.pth")
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    args = cli_args(s, tmp_path / "ALBEF.pth", tmp_path / "out", bert)
    args[args.index("--image-res") + 1] = "56"
    main(args)
    model = ij.load(tmp_path / "out")
    assert model.config.vision.grid == (7, 7)
    pe = torch.from_numpy(sd["visual_encoder.pos_embed"])
    grid = pe[:, 1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    up = F.interpolate(grid, size=(7, 7), mode="bicubic", align_corners=False)
    want = torch.cat([pe[:, :1], up.permute(0, 2, 3, 1).reshape(1, 49, -1)], dim=1).numpy()
    got = model.params["visual_encoder"]["pos_embed"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got[:, 0], sd["visual_encoder.pos_embed"][:, 0])
    np.testing.assert_allclose(resize_pos_embed(sd["visual_encoder.pos_embed"], 5),
                               sd["visual_encoder.pos_embed"], atol=1e-6, rtol=0)


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ij.CheckpointError, match=r"iterprime-jax\[convert\]"):
        read_pth(tmp_path / "ALBEF.pth")


def test_default_albef_base_config():
    c = AlbefConfig()
    assert c.vision.image_hw == (256, 256) and c.vision.grid == (16, 16)
    assert c.vision.layer_norm_eps == 1e-6 and c.text.layer_norm_eps == 1e-12
    assert (c.text.fusion_layer, c.text.num_hidden_layers, c.text.vocab_size) == (6, 12, 30522)
    assert AlbefConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="fusion_layer 12"):
        AlbefTextConfig(fusion_layer=12)


def test_authors_tokenisation_no_trailing_sep():
    """ALBEF as the authors run it: "there is a {expression}", [CLS] + WordPieces, no [SEP]."""
    from transformers import BertTokenizer

    tok = BertTokenizer(str(VOCAB), do_lower_case=True)
    nlp = load_spacy()
    cfg = IteRPrimEConfig(append_sep=False)
    a = encode_expression(tok, nlp, "the dog left of the bench", cfg)
    want = [101, 2045, 2003, 1037, 1996, 3899, 2187, 1997, 1996, 6847]
    assert a.input_ids[:len(want)].tolist() == want
    assert a.attention_mask.sum() == len(want) and a.input_ids[len(want)] == 0
    assert 102 not in a.input_ids.tolist()
    assert a.prompt == "there is a the dog left of the bench"
    assert a.primary.nonzero()[0].tolist() == [5]  # "dog"
    b = encode_expression(tok, nlp, "Giraffe eating leaves", cfg)
    pieces = tok.convert_ids_to_tokens(b.input_ids[:int(b.attention_mask.sum())].tolist())
    assert pieces == ["[CLS]", "there", "is", "a", "gi", "##raf", "##fe", "eating", "leaves"]
    assert b.primary.nonzero()[0].tolist() == [4, 5, 6]  # every piece of "giraffe"
    # BLIP's convention on the same sentence: the same ids plus a trailing [SEP]
    c = encode_expression(tok, nlp, "the dog left of the bench", IteRPrimEConfig())
    assert c.input_ids[:len(want) + 1].tolist() == want + [102]
    # truncation keeps [CLS] + T - 1 pieces
    with pytest.warns(UserWarning, match="truncated"):
        d = encode_expression(tok, nlp, "the dog left of the bench",
                              cfg.replace(max_text_length=6))
    assert d.input_ids.tolist() == want[:6] and d.truncated


def test_segment_without_config_uses_the_albef_method(tmp_path, monkeypatch):
    """`ij.segment*` without a config run the directory's method.json: no [SEP], the authors'
    parser (a spaCy stand-in here: no Stanza models offline); an explicit config wins."""
    from iterprime_jax.method import pipeline
    from iterprime_jax.method.language import SpacyParser

    s = SIZES[1]
    save_pth(random_albef_state_dict(s, seed=2, extras=False), tmp_path / "ALBEF.pth")
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    main(cli_args(s, tmp_path / "ALBEF.pth", tmp_path / "albef", bert))
    model = ij.load(tmp_path / "albef")
    asked = []

    def parser(config):
        asked.append(config)
        return SpacyParser(load_spacy(), authors=config.authors_code)

    monkeypatch.setattr(pipeline, "load_parser", parser)
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), np.uint8)
    r = ij.segment(model, image, "the dog left of the bench")
    assert asked[-1] == ij.method_config(model) and asked[-1].parser == "stanza"
    batch = pipeline.encode_texts(model, ["the dog left of the bench"], asked[-1])
    assert 102 not in batch.input_ids[0].tolist() and r.primary_word == "dog"
    ij.segment(model, image, "the dog", config=IteRPrimEConfig(layer=s.fusion, max_text_length=32))
    assert asked[-1].append_sep and asked[-1].parser == "spacy"


def test_albef_converted_dir_roundtrip_keeps_dst_on_failure(tmp_path):
    """A failing re-conversion into an existing converted directory leaves it untouched."""
    s = SIZES[0]
    sd = random_albef_state_dict(s, extras=False)
    save_pth(sd, tmp_path / "ALBEF.pth")
    bert = bert_config_json(s, tmp_path / "config_bert.json")
    dst = tmp_path / "out"
    main(cli_args(s, tmp_path / "ALBEF.pth", dst, bert))
    before = sorted(p.name for p in dst.iterdir())
    del sd["itm_head.bias"]
    save_pth(sd, tmp_path / "broken.pth")
    _refused(tmp_path, cli_args(s, tmp_path / "broken.pth", dst, bert), "not empty",
             "--overwrite")
    _refused(tmp_path, cli_args(s, tmp_path / "broken.pth", dst, bert) + ["--overwrite"],
             "itm_head.bias")
    assert sorted(p.name for p in dst.iterdir()) == before
    ij.load(dst)
    shutil.rmtree(dst)
