"""Checkpoints as transformers 5 writes them (tokenizer.json, no vocab.txt) and hub ids resolved
through an offline Hugging Face cache that the test builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import BertTokenizer

import iterprime_jax as ij
from iterprime_jax.models.conversion import convert_hf_checkpoint
from iterprime_jax.shipped import VOCAB as SHIPPED_VOCAB

from .torch_ref import build_model, hf_config

DATA = Path(__file__).parent / "data"
VOCAB = SHIPPED_VOCAB  # bert-base-uncased
ROOT = Path(__file__).resolve().parents[1]
EXPRESSIONS = ["the man in a red shirt left of the dog", "giraffe on the right",
               "left-most umbrella", "2 zebras"]


def _hf_checkpoint(path: Path, vocab_txt: bool) -> Path:
    """A tiny BLIP ITM checkpoint saved with `save_pretrained`, the tokenizer either as a bare
    vocab.txt (older exports) or as transformers 5 saves it (tokenizer.json + config)."""
    model = build_model(hf_config(vocab_size=30524), seed=3)
    model.save_pretrained(str(path))
    if vocab_txt:
        shutil.copy(VOCAB, path / "vocab.txt")
    else:
        BertTokenizer(str(VOCAB), do_lower_case=True).save_pretrained(str(path))
        assert not (path / "vocab.txt").exists() and (path / "tokenizer.json").exists()
    return path


def test_transformers5_tokenizer_files_convert_load_and_tokenize_like_vocab_txt(tmp_path):
    old = convert_hf_checkpoint(_hf_checkpoint(tmp_path / "hf_old", True), tmp_path / "a")
    new = convert_hf_checkpoint(_hf_checkpoint(tmp_path / "hf_new", False), tmp_path / "b")
    m_old, m_new = ij.load(old), ij.load(new)
    cfg = ij.IteRPrimEConfig(layer=0, max_text_length=16)
    from iterprime_jax.method.pipeline import encode_texts

    a, b = encode_texts(m_old, EXPRESSIONS, cfg), encode_texts(m_new, EXPRESSIONS, cfg)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.focus, b.focus)
    np.testing.assert_array_equal(a.primary, b.primary)
    # real WordPiece ids, not [UNK]: "the" 1996, "man" 2158, "dog" 3899 in bert-base-uncased
    ids = b.input_ids[0][b.attention_mask[0] > 0].tolist()
    assert {1996, 2158, 3899} <= set(ids) and m_new.tokenizer.unk_token_id not in ids
    new_ids, _ = ij.tokenize(m_new.tokenizer, ["left-most guy"], 8)
    old_ids, _ = ij.tokenize(m_old.tokenizer, ["left-most guy"], 8)
    assert new_ids.tolist() == old_ids.tolist() == [[101, 2187, 1011, 2087, 3124, 102, 0, 0]]


REV = "0123456789abcdef0123456789abcdef01234567"
REPO = "Salesforce/blip-itm-base-coco"

_SCRIPT = """
import json, sys
import numpy as np
import jax
import iterprime_jax as ij
from iterprime_jax.models import loading

calls = []
real = loading.convert_hf_checkpoint
def counting(*a, **k):
    calls.append(a)
    return real(*a, **k)
loading.convert_hf_checkpoint = counting
m1 = ij.load(sys.argv[1])
m2 = ij.load(sys.argv[1])
same = all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(m1.params),
                                                 jax.tree_util.tree_leaves(m2.params)))
print(json.dumps({"converts": len(calls), "path": str(m1.path), "same": same,
                  "ids": m2.tokenizer("there is a dog")["input_ids"]}))
"""


def _hf_cache(home: Path) -> Path:
    """An HF hub cache as huggingface_hub lays it out: snapshots/REV and refs/main."""
    repo_dir = home / "hub" / ("models--" + REPO.replace("/", "--"))
    snap = repo_dir / "snapshots" / REV
    snap.mkdir(parents=True)
    _hf_checkpoint(snap, vocab_txt=False)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REV)
    return repo_dir


def test_hub_id_resolves_offline_converts_once_then_loads(tmp_path):
    _hf_cache(tmp_path / "hf")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               HF_HUB_OFFLINE="1", ITERPRIME_CACHE=str(tmp_path / "ours"),
               PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    run = [sys.executable, "-c", _SCRIPT, REPO]
    out = json.loads(subprocess.run(run, env=env, capture_output=True, text=True, check=True,
                                    cwd=tmp_path).stdout.strip().splitlines()[-1])
    converted = tmp_path / "ours" / "Salesforce--blip-itm-base-coco" / REV
    assert out["path"] == str(converted) and (converted / "blip_config.json").exists()
    assert out["converts"] == 1 and out["same"]  # the second load reads our cache
    assert out["ids"] == [101, 2045, 2003, 1037, 3899, 102]
    # a new process finds the converted copy and does not convert again
    again = json.loads(subprocess.run(run, env=env, capture_output=True, text=True, check=True,
                                      cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert again["converts"] == 0 and again["path"] == str(converted)


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               HF_HUB_OFFLINE="1", ITERPRIME_CACHE=str(tmp_path / "ours"),
               PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    code = ("import iterprime_jax as ij\n"
            "try:\n    ij.load('nobody/no-such-model')\n"
            "except ij.CheckpointError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert "ERR" in out and "nobody/no-such-model" in out and "HF_HUB_OFFLINE" in out
