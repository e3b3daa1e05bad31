"""The authors' language step (docs/method.md section 2): the Stanza NP/NN agent rule, the joining
of whitespace words, their WordPiece positions, and spaCy under ``authors_code``.

No Stanza models are needed: documents are built by hand in Stanza's shape, words with exactly
``.id``/``.text``/``.pos`` and real constituency trees read by Stanza's own tree reader. Every
expected agent, focus set and position below is derived by hand from the rule (the module
docstring of `iterprime_jax.method.authors_language`): the prompt is ``[CLS] there is a`` + the
expression, so the expression's first WordPiece is at position 4.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import BertTokenizer

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.authors_language import find_agent, join_pieces
from iterprime_jax.method.language import (
    ExpressionParser,
    ParserUnavailableError,
    SpacyParser,
    StanzaParser,
    encode_expression,
    load_parser,
    load_spacy,
    load_stanza,
)
from iterprime_jax.shipped import VOCAB

tree_reader = pytest.importorskip("stanza.models.constituency.tree_reader")

#: The converted ALBEF method.json's text settings (no [SEP], up to 512 positions).
ALBEF = IteRPrimEConfig(append_sep=False, authors_code=True, parser="stanza",
                        max_text_length=512)


@dataclasses.dataclass
class Word:
    """A Stanza word as the rule reads it: exactly id, text, pos."""

    id: int
    text: str
    pos: str


def doc(words: str, tree: str | None) -> SimpleNamespace:
    """A Stanza-shaped document: ``words`` as "text/POS" separated by spaces (ids from 1)."""
    ws = [Word(i + 1, *w.rsplit("/", 1)) for i, w in enumerate(words.split())]
    parsed = tree_reader.read_trees(tree)[0] if tree else None
    return SimpleNamespace(sentences=[SimpleNamespace(words=ws, constituency=parsed)])


@dataclasses.dataclass(frozen=True)
class Case:
    expression: str
    words: str
    tree: str | None
    agent: str
    primary: list[int]      # WordPiece positions of the primary word
    focus: list[int]        # WordPiece positions of the focus words (primary included)
    why: str


CASES = [
    Case("two men near the bus", "two/NUM men/NOUN near/ADP the/DET bus/NOUN",
         "(ROOT (NP (NP (CD two) (NNS men)) (PP (IN near) (NP (DT the) (NN bus)))))",
         "bus", [8], [4, 5, 8], "plural head NNS is not taken: the next innermost NP's NN"),
    Case("the man next to the man in blue",
         "the/DET man/NOUN next/ADV to/ADP the/DET man/NOUN in/ADP blue/NOUN",
         "(ROOT (NP (NP (DT the) (NN man)) (ADVP (RB next) (PP (IN to) (NP (NP (DT the) "
         "(NN man)) (PP (IN in) (NP (NN blue))))))))",
         "man", [9], [5, 9, 11], "repeated head: the LAST word with the agent's text"),
    Case("the man's hat", "the/DET man/NOUN 's/PART hat/NOUN",
         "(ROOT (NP (NP (DT the) (NN man) (POS 's)) (NN hat)))",
         "man", [5, 6, 7], [5, 6, 7, 8], "possessive: agent piece 'man' moves to 'man's'"),
    Case("the cat near the dog's bowl",
         "the/DET cat/NOUN near/ADP the/DET dog/NOUN 's/PART bowl/NOUN",
         "(ROOT (NP (NP (DT the) (NN cat)) (PP (IN near) (NP (NP (DT the) (NN dog) (POS 's)) "
         "(NN bowl)))))",
         "cat", [5], [5, 8, 9, 10, 11], "joined 'dog's' is a NOUN focus though its last piece "
         "is PART"),
    Case("a woman in a t-shirt", "a/DET woman/NOUN in/ADP a/DET t/NOUN -/PUNCT shirt/NOUN",
         "(ROOT (NP (NP (DT a) (NN woman)) (PP (IN in) (NP (DT a) (NN t) (HYPH -) "
         "(NN shirt)))))",
         "woman", [5], [5, 8, 9, 10], "hyphen: the '-' piece is focus as part of 't-shirt'"),
    Case("a t-shirt on the chair", "a/DET t/NOUN -/PUNCT shirt/NOUN on/ADP the/DET chair/NOUN",
         "(ROOT (NP (NP (DT a) (NN t) (HYPH -) (NN shirt)) (PP (IN on) (NP (DT the) "
         "(NN chair)))))",
         "shirt", [5, 6, 7], [5, 6, 7, 10], "rightmost NN of the first innermost NP, joined"),
    Case("very small", "very/ADV small/ADJ", "(ROOT (ADJP (RB very) (JJ small)))",
         "[UNK]", [], [5], "no noun: no primary word, the adjective is still focus"),
    Case("over there", "over/ADV there/ADV", "(ROOT (ADVP (RB over) (RB there)))",
         "[UNK]", [], [], "no focus word and no primary word"),
    Case("the big red ball", "the/DET big/ADJ red/ADJ ball/NOUN",
         "(ROOT (NP (DT the) (JJ big) (JJ red) (NN ball)))",
         "ball", [7], [5, 6, 7], "one NP: its NN"),
    Case("men in hats", "men/NOUN in/ADP hats/NOUN",
         "(ROOT (NP (NP (NNS men)) (PP (IN in) (NP (NNS hats)))))",
         "hats", [6], [4, 6], "no NN anywhere: the last NOUN"),
    Case("the tennis racket", "the/DET tennis/NOUN racket/NOUN",
         "(ROOT (NP (DT the) (NN tennis) (NN racket)))",
         "racket", [6, 7], [5, 6, 7], "right to left inside the NP (racket = rack ##et)"),
    Case("a large giraffe", "a/DET large/ADJ giraffe/NOUN",
         "(ROOT (NP (DT a) (JJ large) (NN giraffe)))",
         "giraffe", [6, 7, 8], [5, 6, 7, 8], "every WordPiece of the primary word"),
    Case("the dog under the tables", "the/DET dog/NOUN under/ADP the/DET tables/NOUN",
         "(ROOT (NP (NP (DT the) (NN dog)) (PP (IN under) (NP (DT the) (NNS tables)))))",
         "dog", [5], [5, 8], "an enclosing NP is never searched; the first innermost is"),
]


class Prebuilt:
    """A stand-in for a Stanza pipeline: prebuilt documents by text; counts its calls."""

    def __init__(self, docs: dict[str, object]):
        self.docs, self.calls = docs, 0

    def __call__(self, text: str) -> object:
        self.calls += 1
        d = self.docs[text]
        if isinstance(d, Exception):
            raise d
        return d


@pytest.fixture(scope="module")
def tok():
    t = BertTokenizer(str(VOCAB))
    assert t.convert_tokens_to_ids(["there", "is", "a", "man"]) == [2045, 2003, 1037, 2158]
    return t


@pytest.fixture(scope="module")
def stanza_parser():
    return StanzaParser(Prebuilt({c.expression: doc(c.words, c.tree) for c in CASES}))


@pytest.mark.parametrize("case", CASES, ids=[c.expression for c in CASES])
def test_authors_rule(case: Case, tok, stanza_parser):
    d = doc(case.words, case.tree)
    agent, _ = find_agent(d.sentences[0].words, d.sentences[0].constituency)
    assert agent == case.agent, case.why
    t = encode_expression(tok, stanza_parser, case.expression, ALBEF)
    assert t.primary.nonzero()[0].tolist() == case.primary, case.why
    assert t.focus.nonzero()[0].tolist() == case.focus, case.why
    want = tok.convert_tokens_to_ids(["there", "is", "a", *tok.tokenize(case.expression)])
    n = t.length
    assert t.input_ids[:n].tolist() == [101, *want] and not t.truncated  # no [SEP]


def test_real_ids_of_joined_words(tok, stanza_parser):
    t = encode_expression(tok, stanza_parser, "the man's hat", ALBEF)
    # [CLS] there is a the man ' s hat
    assert t.input_ids[:9].tolist() == [101, 2045, 2003, 1037, 1996, 2158, 1005, 1055, 6045]
    assert t.primary_word == "man's"
    t = encode_expression(tok, stanza_parser, "a woman in a t-shirt", ALBEF)
    assert t.input_ids[8:11].tolist() == [1056, 1011, 3797]  # t - shirt
    assert t.focus_words == ["woman", "t-shirt"]


def test_agent_id_is_the_last_occurrence():
    d = doc("the/DET man/NOUN next/ADV to/ADP the/DET man/NOUN",
            "(ROOT (NP (NP (DT the) (NN man)) (ADVP (RB next) (PP (IN to) (NP (DT the) "
            "(NN man))))))")
    assert find_agent(d.sentences[0].words, d.sentences[0].constituency) == ("man", 6)


def test_join_pieces():
    joined = join_pieces([(1, "the", "DET"), (2, "man", "NOUN"), (3, "'s", "PART"),
                          (4, "hat", "NOUN")], "the man's hat")
    assert [(w.text, w.pos, w.id) for w in joined] == [("the", "DET", 1), ("man's", "NOUN", 3),
                                                       ("hat", "NOUN", 4)]
    # no focus piece: the last piece's POS is kept
    assert join_pieces([(1, "'", "PUNCT"), (2, "s", "PART")], "'s")[0].pos == "PART"


def test_long_expression_is_not_truncated(tok):
    """45 WordPieces with [CLS] (no [SEP]): more than the old 40-token bucket."""
    expression = "the " + "very " * 38 + "big dog"
    words = "the/DET " + "very/ADV " * 38 + "big/ADJ dog/NOUN"
    tree = "(ROOT (NP (DT the) (ADJP " + "(RB very) " * 38 + "(JJ big)) (NN dog)))"
    p = StanzaParser(Prebuilt({expression: doc(words, tree)}))
    t = encode_expression(tok, p, expression, ALBEF)
    assert t.length == 45 and not t.truncated
    assert t.primary.nonzero()[0].tolist() == [44]
    assert t.focus.nonzero()[0].tolist() == [43, 44]
    with pytest.warns(UserWarning, match="truncated"):
        cut = encode_expression(tok, p, expression, ALBEF.replace(max_text_length=40))
    assert cut.truncated and not cut.primary.any()


def test_each_expression_parsed_once(tok):
    nlp = Prebuilt({"the big red ball": doc(CASES[8].words, CASES[8].tree)})
    p = StanzaParser(nlp)
    for _ in range(3):
        encode_expression(tok, p, "  the big   red ball ", ALBEF)
    assert nlp.calls == 1


@pytest.mark.parametrize("bad", [
    SimpleNamespace(sentences=[]),
    SimpleNamespace(sentences=[SimpleNamespace(words=[], constituency=None)]),
    RuntimeError("parser failed"),
], ids=["no sentence", "no words", "parser raises"])
def test_unparsable_expression_has_no_primary_word(tok, bad):
    p = StanzaParser(Prebuilt({"?!": bad, "猫": bad}))
    for text in ("?!", "猫"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = encode_expression(tok, p, text, ALBEF)
        assert not t.primary.any() and not t.focus.any() and t.primary_word is None


def test_no_tree_falls_back_to_the_last_noun(tok):
    p = StanzaParser(Prebuilt({"the cat near the dog": doc(
        "the/DET cat/NOUN near/ADP the/DET dog/NOUN", None)}))
    with pytest.warns(UserWarning, match="no constituency tree"):
        t = encode_expression(tok, p, "the cat near the dog", ALBEF)
    assert t.primary_word == "dog"


def test_only_punctuation_and_empty(tok):
    p = StanzaParser(Prebuilt({"?": doc("?/PUNCT", "(ROOT (. ?))")}))
    t = encode_expression(tok, p, "?", ALBEF)
    assert not t.primary.any() and not t.focus.any()
    with pytest.raises(ValueError, match="empty referring expression"):
        encode_expression(tok, p, "   ", ALBEF)


def test_stub_parser_interface(tok):
    class Fixed(ExpressionParser):
        def parse(self, expression):
            return SpacyParser(load_spacy()).parse(expression)

    t = encode_expression(tok, Fixed(), "the dog", ALBEF)
    assert t.primary_word == "dog"


# --------------------------------------------------------------------------- missing Stanza
def test_missing_stanza_models_is_one_clear_error(tmp_path, monkeypatch):
    for where in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(ParserUnavailableError) as e:
            load_stanza(where)
        msg = str(e.value)
        assert 'stanza.download("en")' in msg and "--parser spacy" in msg and str(where) in msg
    monkeypatch.setitem(sys.modules, "stanza", None)
    with pytest.raises(ParserUnavailableError, match=r"stanza package.*--parser spacy"):
        load_stanza(tmp_path)
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(tmp_path / "env"))
    with pytest.raises(ParserUnavailableError):
        load_parser(IteRPrimEConfig(parser="stanza"))


# --------------------------------------------------------------------------- spaCy
def test_spacy_authors_code_last_occurrence_and_joining(tok):
    nlp = load_spacy()
    authors, paper = IteRPrimEConfig(authors_code=True), IteRPrimEConfig()
    e = "the man next to the man in blue"
    assert encode_expression(tok, nlp, e, paper).primary.nonzero()[0].tolist() == [5]
    assert encode_expression(tok, nlp, e, authors).primary.nonzero()[0].tolist() == [9]
    e = "a woman in a t-shirt"  # spaCy: t/NOUN -/PUNCT shirt/NOUN
    assert 9 not in encode_expression(tok, nlp, e, paper).focus.nonzero()[0].tolist()
    t = encode_expression(tok, nlp, e, authors)
    assert t.focus.nonzero()[0].tolist() == [5, 8, 9, 10]
    # spaCy's primary "cat" is a piece of "cat's": it moves to the joined word
    t = encode_expression(tok, nlp, "the cat's", authors)
    assert t.primary.nonzero()[0].tolist() == [5, 6, 7] and t.primary_word == "cat's"
    assert encode_expression(tok, nlp, "the cat's", paper).primary.nonzero()[0].tolist() == [5]
    assert load_parser(authors).authors and not load_parser(paper).authors


# --------------------------------------------------------------------------- run identity
def test_parser_flag_and_old_run_dirs_resume_as_spacy(tmp_path: Path):
    import argparse

    from iterprime_jax.cli_args import add_method_args, method_overrides
    from iterprime_jax.evaluation.config import EvalError
    from iterprime_jax.evaluation.records import check_run_config

    ap = argparse.ArgumentParser()
    add_method_args(ap)
    assert method_overrides(ap.parse_args(["--parser", "stanza"])) == {"parser": "stanza"}
    with pytest.raises(SystemExit):
        ap.parse_args(["--parser", "nltk"])
    method = dataclasses.asdict(IteRPrimEConfig())
    old = {"version": 3, "method": {k: v for k, v in method.items() if k != "parser"}}
    (tmp_path / "run_config.json").write_text(json.dumps(old))
    (tmp_path / "samples.jsonl").write_text('{"sent_id": 1}\n')  # a run with samples
    assert check_run_config(tmp_path, {**old, "method": method}, write=False)
    stanza_method = dataclasses.asdict(IteRPrimEConfig(parser="stanza"))
    with pytest.raises(EvalError, match="stanza"):
        check_run_config(tmp_path, {**old, "method": stanza_method}, write=False)
