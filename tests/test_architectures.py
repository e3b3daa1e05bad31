"""The table of architectures (`iterprime_jax.models.architectures`): each kind declared once,
`load` dispatching through it into the type it declares, and ALBEF's config standing on its
own (round trip, files written while it subclassed BlipConfig)."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import iterprime_jax as ij
from iterprime_jax.models import architectures as archs
from iterprime_jax.models.albef.config import AlbefConfig, AlbefTextConfig, albef_vision
from iterprime_jax.models.checkpoint import CheckpointError
from iterprime_jax.models.loaded import Model, ProposerModel
from iterprime_jax.models.mask2former.config import Mask2FormerConfig, SwinConfig
from iterprime_jax.shipped import VOCAB
from tests.conftest import write_tiny_model

REPO = Path(__file__).resolve().parents[1]


def tiny_albef_config() -> AlbefConfig:
    text = AlbefTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=4,
                           max_position_embeddings=64, encoder_hidden_size=32, fusion_layer=1)
    return AlbefConfig(vision=albef_vision(32, 8, 32, 1, 4), text=text)


def tiny_m2f_config() -> Mask2FormerConfig:
    swin = SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=5)
    return Mask2FormerConfig(backbone=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                             encoder_feedforward_dim=48, encoder_layers=1, decoder_layers=2,
                             num_attention_heads=4, dim_feedforward=64, num_queries=3,
                             num_labels=2)


def _write(arch: archs.Architecture, config, path: Path, seed: int) -> Path:
    """A converted directory of `arch` with random params (as the converters lay it out)."""
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                                    arch.abstract_params(config))
    arch.save(path, params, config)
    if arch.tokenizer:
        shutil.copy(VOCAB, path / "vocab.txt")
    return path


def test_table_lists_each_kind_once():
    names = [a.name for a in archs.ARCHITECTURES]
    assert names == ["blip", "albef", "mask2former"]
    for field in ("name", "config_class", "config_file"):
        values = [getattr(a, field) for a in archs.ARCHITECTURES]
        assert len(set(values)) == len(values), field
    assert {a.config_class for a in archs.ARCHITECTURES} == {ij.BlipConfig, AlbefConfig,
                                                             Mask2FormerConfig}
    assert archs.HF_MODEL_TYPES == ("blip", "mask2former")
    assert archs.CONFIG_FILES == ("blip_config.json", "albef_config.json",
                                  "mask2former_config.json")
    for arch in archs.ARCHITECTURES:
        assert archs.architecture_of(arch.config_class()) is arch
    assert archs.for_hf_model_type("mask2former") is archs.MASK2FORMER
    with pytest.raises(CheckpointError, match=r"x/config.json: model_type 'vit' is not "
                                              r"supported \(supported: blip, mask2former\)"):
        archs.for_hf_model_type("vit", "x/config.json")
    with pytest.raises(TypeError, match="SwinConfig is not a model config"):
        archs.architecture_of(SwinConfig())


def test_albef_config_is_not_a_blip_config():
    assert not issubclass(AlbefConfig, ij.BlipConfig)
    fields = {f.name for f in dataclasses.fields(AlbefConfig)}
    assert fields == {"vision", "text", "image_mean", "image_std", "dtype"}
    assert AlbefConfig().fusion_layer == 6 == AlbefConfig().text.fusion_layer


def test_albef_config_round_trip(tmp_path):
    cfg = tiny_albef_config().replace(image_mean=(0.5, 0.25, 0.125), dtype="bfloat16")
    assert AlbefConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.save(tmp_path / "c.json")
    back = AlbefConfig.load(tmp_path / "c.json")
    assert back == cfg and back.dtype.name == "bfloat16" and back.fusion_layer == 1
    assert isinstance(back.text, AlbefTextConfig) and isinstance(back.image_std, tuple)
    non_square = cfg.replace(vision=dataclasses.replace(cfg.vision, image_size=(32, 48)))
    assert AlbefConfig.from_dict(json.loads(json.dumps(non_square.to_dict()))) == non_square


def test_albef_config_written_as_a_blip_config_still_loads(tmp_path):
    """The format of albef_config.json before composition: BlipConfig's fields (with the
    unused projection_dim) plus "arch": "albef"."""
    cfg = tiny_albef_config()
    old = {**cfg.to_dict(), "projection_dim": 256, "arch": "albef"}
    assert AlbefConfig.from_dict(old) == cfg
    d = _write(archs.ALBEF, cfg, tmp_path / "albef", 0)
    (d / "albef_config.json").write_text(json.dumps(old, indent=2))
    model = ij.load(d)
    assert isinstance(model, Model) and model.config == cfg


def test_load_dispatches_through_the_table(tmp_path):
    blip = ij.load(write_tiny_model(tmp_path / "blip"))
    albef = ij.load(_write(archs.ALBEF, tiny_albef_config(), tmp_path / "albef", 1))
    m2f = ij.load(_write(archs.MASK2FORMER, tiny_m2f_config(), tmp_path / "m2f", 2))
    assert type(blip) is Model and type(blip.config) is ij.BlipConfig
    assert type(albef) is Model and albef.config == tiny_albef_config()
    assert type(m2f) is ProposerModel and m2f.config == tiny_m2f_config()
    assert not hasattr(m2f, "tokenizer")
    for model in (blip, albef):
        assert model.tokenizer.convert_tokens_to_ids(["red"]) == [2417]
    # the loaded ALBEF runs through the functional API (its module from the table)
    ids = np.array([[101, 2417, 102]], np.int32)
    logits = ij.itm_logits(albef.params, albef.config, np.zeros((1, 32, 32, 3), np.float32),
                           ids, np.ones_like(ids))
    assert logits.shape == (1, 2) and np.isfinite(np.asarray(logits)).all()
    # each loads into the role it has: a matching model is no proposer and back
    with pytest.raises(ValueError, match="must be a Mask2Former model.*AlbefConfig"):
        ij.Proposer(albef)
    assert ij.Proposer(m2f).num_queries == 3


def test_missing_config_file_names_the_table_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"blip_config.json \(or albef_config.json, "
                                              r"mask2former_config.json\) missing"):
        ij.load(tmp_path / "empty")


def _imported_modules(path: Path) -> set[str]:
    """The absolute names of the iterprime_jax modules a source file imports."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("iterprime_jax")}


def test_models_import_no_method_code_and_nothing_imports_the_cli():
    """The models import of the method layer only its settings (method.json); bicubic weights
    come from `iterprime_jax.resize`. No library module imports the `convert` CLI."""
    for f in sorted((REPO / "iterprime_jax" / "models").rglob("*.py")):
        method = {m for m in _imported_modules(f) if m.startswith("iterprime_jax.method")}
        assert method <= {"iterprime_jax.method.settings",
                          "iterprime_jax.method.settings.write_method_json"}, (f, method)
    for f in sorted((REPO / "iterprime_jax").rglob("*.py")):
        if f.name != "convert.py":
            assert "iterprime_jax.models.convert" not in _imported_modules(f), f


def test_load_does_not_import_the_cli(tmp_path):
    d = write_tiny_model(tmp_path / "blip")
    code = ("import sys; from iterprime_jax.models.loading import load; load(sys.argv[1]); "
            "print('iterprime_jax.models.convert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr
