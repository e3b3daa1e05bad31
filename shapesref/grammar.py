"""The ShapesRef expression grammar: structured expressions (`Desc`, `Expression`), their
surface forms (`phrasings`) and the parser of the generated sentences (`parse_expression`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import COLOUR_RGB, DIRECTIONS, SHAPE_NAMES, SIZES

if TYPE_CHECKING:
    from .scene import SceneObject


@dataclass(frozen=True)
class Desc:
    """An object description: any of shape / colour / size (None = not mentioned)."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether ``obj`` fits every attribute the description mentions."""
        return (
            (self.shape is None or obj.shape == self.shape)
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )

    @property
    def num_attributes(self) -> int:
        return sum(a is not None for a in (self.shape, self.colour, self.size))


@dataclass(frozen=True)
class Expression:
    """A structured referring expression.

    ``position`` is one of `POSITIONS`; ``relation`` one of `RELATIONS` with its ``landmark``.
    An expression has at most one of the two.
    """

    desc: Desc
    position: str | None = None
    relation: str | None = None
    landmark: Desc | None = None

    @property
    def kind(self) -> str:
        if self.relation is not None:
            return "relation"
        if self.position is not None:
            return "position"
        return "attribute"


def _noun_phrase(d: Desc) -> str:
    return " ".join(w for w in (d.size, d.colour, d.shape or "shape") if w)


_POSITION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {np} on the left", "the leftmost {np}", "left {np}", "{np} on the left"),
    "right": ("the {np} on the right", "the rightmost {np}", "right {np}", "{np} on the right"),
    "top": ("the {np} at the top", "the topmost {np}", "top {np}", "{np} at the top"),
    "bottom": ("the {np} at the bottom", "the lowest {np}", "bottom {np}", "{np} at the bottom"),
    "corner": ("the {np} in the {p}", "the {p} {np}", "{p} {np}", "{np} at the {p}"),
}
_RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
}


def phrasings(expr: Expression) -> list[str]:
    """All surface forms of an expression (lowercase, space-separated, no punctuation)."""
    d = expr.desc
    np_ = _noun_phrase(d)
    if expr.relation is not None:
        assert expr.landmark is not None
        lm = _noun_phrase(expr.landmark)
        out = []
        for rw in _RELATION_WORDS[expr.relation]:
            out += [
                f"the {np_} {rw} the {lm}",
                f"{np_} {rw} {lm}",
                f"the {np_} that is {rw} the {lm}",
            ]
        return out
    if expr.position is not None:
        p = expr.position
        templates = _POSITION_TEMPLATES[p if p in DIRECTIONS else "corner"]
        return [t.format(np=np_, p=p) for t in templates]
    out = [f"the {np_}", np_]
    if d.shape is not None and d.colour is not None and d.size is None:
        out.append(f"the {d.shape} that is {d.colour}")
    elif d.shape is not None and d.colour is None and d.size is not None:
        out.append(f"the {d.shape} that is {d.size}")
    elif d.shape is not None and d.colour is not None and d.size is not None:
        out.append(f"the {d.size} {d.shape} that is {d.colour}")
    return out


_FILLER = frozenset({"the", "on", "at", "in", "that", "is", "to"})
_POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "leftmost": "left",
    "rightmost": "right",
    "topmost": "top",
    "lowest": "bottom",
}


def _parse_desc(words: Sequence[str]) -> tuple[Desc, list[str]]:
    shape = colour = size = None
    noun = False
    directions: list[str] = []
    for w in words:
        if w in SHAPE_NAMES:
            shape, noun = w, True
        elif w == "shape":
            noun = True
        elif w in COLOUR_RGB:
            colour = w
        elif w in SIZES:
            size = w
        elif w in _POSITION_WORDS:
            directions.append(_POSITION_WORDS[w])
        elif w not in _FILLER:
            raise ValueError(f"unknown word {w!r}")
    if not noun:
        raise ValueError(f"no noun in {' '.join(words)!r}")
    return Desc(shape, colour, size), directions


def parse_expression(text: str) -> Expression:
    """Parses a sentence of the generated grammar back into an `Expression`.

    Raises ValueError for anything outside the grammar.
    """
    words = text.lower().split()
    rel_at = None
    for i, w in enumerate(words):
        if w in ("left", "right") and i + 1 < len(words) and words[i + 1] == "of":
            rel_at, relation, rel_len = i, f"{w} of", 2
            break
        if w in ("above", "below", "under"):
            rel_at, relation, rel_len = i, ("below" if w == "under" else w), 1
            break
    if rel_at is not None:
        desc, dirs = _parse_desc(words[:rel_at])
        landmark, ldirs = _parse_desc(words[rel_at + rel_len :])
        if dirs or ldirs:
            raise ValueError(f"position words inside a relation: {text!r}")
        return Expression(desc, relation=relation, landmark=landmark)
    desc, dirs = _parse_desc(words)
    if not dirs:
        return Expression(desc)
    vertical = [d for d in dirs if d in ("top", "bottom")]
    horizontal = [d for d in dirs if d in ("left", "right")]
    if len(vertical) > 1 or len(horizontal) > 1:
        raise ValueError(f"conflicting position words: {text!r}")
    return Expression(desc, position=" ".join(vertical + horizontal))
