"""The evaluator's language step on ShapesRef val: spaCy (the default) against the authors'
Stanza rule fed by a stubbed Stanza pipeline (prebuilt Stanza-shaped documents, so no models are
needed and the time is the rule's own: joining, the NP/NN tree walk, WordPieces, masks).

    PYTHONPATH=.:bench python bench/bench_parser.py [--refs PATH] [--out OUT.json]

The real Stanza pipeline's own parse time is not measured here (no models offline); each
distinct expression is parsed once per process (`StanzaParser` caches).
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path
from types import SimpleNamespace

from bench_common import write_record
from transformers import BertTokenizer

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.language import StanzaParser, encode_batch, load_spacy
from iterprime_jax.shipped import VOCAB
from shapesref.evaluation import default_manual_dir


def val_sentences(refs: Path) -> list[str]:
    with refs.open("rb") as f:
        return [s["sent"] for r in pickle.load(f) if r["split"] == "val" for s in r["sentences"]]


def stanza_docs(nlp, sentences: list[str]) -> dict[str, object]:
    """Stanza-shaped documents from spaCy's tokens and tags (one flat NP per sentence)."""
    from stanza.models.constituency.tree_reader import read_trees

    docs = {}
    for s in set(sentences):
        d = nlp(s)
        words = [SimpleNamespace(id=t.i + 1, text=t.text, pos=t.pos_) for t in d]
        tree = read_trees("(ROOT (NP " + " ".join(f"({t.tag_} {t.text})" for t in d) + "))")[0]
        docs[s] = SimpleNamespace(sentences=[SimpleNamespace(words=words, constituency=tree)])
    return docs


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--refs", type=Path,
                    default=default_manual_dir() / "shapesref" / "refs(unc).p")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/parser-cpu.json"))
    args = ap.parse_args()
    sentences = val_sentences(args.refs)
    tok = BertTokenizer(str(VOCAB))
    nlp = load_spacy()
    docs = stanza_docs(nlp, sentences)
    spacy_cfg = IteRPrimEConfig()
    stanza_cfg = IteRPrimEConfig(parser="stanza", authors_code=True, append_sep=False,
                                 max_text_length=512)
    encode_batch(tok, nlp, sentences[:8], spacy_cfg)  # warm

    def run_spacy():
        encode_batch(tok, nlp, sentences, spacy_cfg)

    def run_stanza_first():  # a fresh parser: every distinct expression parsed once
        encode_batch(tok, StanzaParser(docs.__getitem__), sentences, stanza_cfg)

    cached = StanzaParser(docs.__getitem__)
    encode_batch(tok, cached, sentences, stanza_cfg)

    def run_stanza_cached():
        encode_batch(tok, cached, sentences, stanza_cfg)

    rec = {
        "what": "language step (parse + WordPieces + masks) over ShapesRef val, seconds, best "
                f"of {args.repeats}",
        "command": "PYTHONPATH=.:bench python bench/bench_parser.py",
        "sentences": len(sentences), "distinct": len(docs),
        "spacy_s": best_of(run_spacy, args.repeats),
        "stanza_stub_first_s": best_of(run_stanza_first, args.repeats),
        "stanza_stub_cached_s": best_of(run_stanza_cached, args.repeats),
        "note": "stub = prebuilt Stanza-shaped docs (no Stanza models offline); the real "
                "pipeline's parse time adds once per distinct expression",
    }
    write_record(args.out, rec)


if __name__ == "__main__":
    main()
