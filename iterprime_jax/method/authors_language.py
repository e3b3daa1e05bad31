"""The authors' language step as a pure rule (docs/method.md section 2): whitespace-word joining
and the Stanza noun-phrase agent (primary word) search, on plain data.

Written from the description of the IteRPrimE authors' ``util/stanza_utils.py`` and
``visualize_groundvlp`` (not their code). Three rules:

* `join_pieces`: a parser may split one whitespace word into pieces ("man's" -> man + 's,
  "t-shirt" -> t + - + shirt). Pieces are concatenated until they spell the whitespace word;
  the joined word takes the id of its last piece, and the POS ``NOUN`` if any of its pieces has
  a focus POS (else the last piece's POS).
* `find_agent`: pre-order walk of the constituency tree; the first noun phrase (label exactly
  ``NP``) with no noun phrase inside it, searched right to left, depth first, for a node labelled
  exactly ``NN`` (singular common noun: ``NNS``/``NNP``/``NNPS`` are not taken) gives the agent;
  else the last word whose POS is ``NOUN``; else none. The agent's id is the id of the LAST word
  with the agent's text.
* `agent_word`: an agent id that is not a joined word's id (it was a piece) moves forward to the
  next one that is (the joined word holding it).

Everything reads only ``.id``, ``.text``, ``.pos`` of words and ``.label``, ``.children``,
``.is_leaf()`` of tree nodes, so any Stanza version (or a stub) serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["MAIN_POS", "NO_AGENT", "JoinedWord", "agent_word", "find_agent", "join_pieces"]

#: The authors' focus POS tags (universal POS).
MAIN_POS = ("NOUN", "VERB", "ADJ", "PROPN", "NUM")
#: The agent when none is found (the authors' placeholder).
NO_AGENT = "[UNK]"


@dataclasses.dataclass(frozen=True)
class JoinedWord:
    """One whitespace word of the expression after joining.

    Attributes:
      text: the whitespace word.
      pos: its POS (``NOUN`` for a joined word with a focus piece).
      id: the parser's id of its last piece.
    """

    text: str
    pos: str
    id: int


def join_pieces(pieces: Sequence[tuple[int, str, str]], text: str) -> list[JoinedWord]:
    """Join parser pieces ``(id, text, pos)`` back into the whitespace words of `text`.

    Returns one `JoinedWord` per whitespace word, in order, as far as the pieces spell them; if
    the pieces stop matching (a parser that rewrote a word), the remaining whitespace words get
    no entry (as in the authors' code, they are neither focus nor primary words).
    """
    split = text.split()
    out: list[JoinedWord] = []
    acc, flag = "", False
    for pid, ptext, ppos in pieces:
        if len(out) >= len(split):
            break
        target = split[len(out)]
        if ptext != target:
            flag = flag or ppos in MAIN_POS
            acc += ptext
            if acc != target:
                continue
            word = JoinedWord(text=acc, pos=MAIN_POS[0] if flag else ppos, id=int(pid))
            acc, flag = "", False
        else:
            word = JoinedWord(text=ptext, pos=ppos, id=int(pid))
        out.append(word)
    return out


def _rightmost_nn(node: Any) -> str | None:
    """Right-to-left depth-first search for a node labelled exactly ``NN``; its word."""
    if node.is_leaf():
        return None
    if node.label == "NN":
        return str(node.children[0].label)
    for child in reversed(node.children):
        found = _rightmost_nn(child)
        if found is not None:
            return found
    return None


def _innermost_np(node: Any, count: list[int]) -> str | None:
    """Pre-order walk counting ``NP`` nodes; an ``NP`` with no ``NP`` below is searched."""
    if node.is_leaf():
        return None
    if node.label == "NP":
        count[0] += 1
    before = count[0]
    for child in node.children:
        found = _innermost_np(child, count)
        if found is not None:
            return found
    if node.label == "NP" and count[0] == before:
        return _rightmost_nn(node)
    return None


def find_agent(words: Sequence[Any], tree: Any | None) -> tuple[str, int]:
    """The authors' agent of a parsed sentence.

    Args:
      words: the parser's words (``.id``, ``.text``, ``.pos``), NOT joined.
      tree: the constituency tree (``.label``, ``.children``, ``.is_leaf()``), or None (then
        only the last-noun fallback applies).

    Returns:
      (agent text, agent id): the id of the last word whose text is the agent, -1 if none
      (`NO_AGENT` when no agent was found).
    """
    agent = _innermost_np(tree, [0]) if tree is not None else None
    if agent is None:
        agent = next((w.text for w in reversed(words) if w.pos == "NOUN"), NO_AGENT)
    agent_id = -1
    for w in words:
        if w.text == agent:
            agent_id = int(w.id)
    return agent, agent_id


def agent_word(agent_id: int, joined: Sequence[JoinedWord], num_pieces: int) -> int | None:
    """Index into `joined` of the primary word: the agent id, moved forward while it is not a
    joined word's id (at most to ``num_pieces + 1``); None for no agent (-1) or no match."""
    if agent_id == -1:
        return None
    index = {w.id: k for k, w in enumerate(joined)}
    while agent_id not in index and agent_id <= num_pieces + 1:
        agent_id += 1
    return index.get(agent_id)
