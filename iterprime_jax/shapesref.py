"""ShapesRef: a procedural, seeded referring-image-segmentation benchmark.

Scenes of 2-6 coloured shapes (circle, square, triangle, diamond, star; small or large) on textured
backgrounds, with referring expressions of three kinds:

* ``attribute``: "the small green triangle", "green triangle" -- the shape alone is ambiguous
  (a same-shape distractor is present); the attribute combination is unique.
* ``position``: "the circle on the left", "top right square", "the leftmost red shape" -- the
  description matches two or more objects; the target is the extreme one (by a margin).
* ``relation``: "the red square below the blue circle" -- the description matches two or more
  objects besides the landmark, the landmark's description is unique, and exactly one of them
  stands in the relation (all others clearly do not).

Everything is drawn from ``numpy.random.Generator`` streams seeded by ``(seed, split, index)``, so
the same config gives byte-identical files. Object masks are pixel-exact: every shape is
rasterised as a boolean mask and painted by that mask, later objects occluding earlier ones; the
annotated mask of an object is its visible part. Circles are rasterised with numpy (pixel centre
inside the circle) and stored as RLE; polygonal shapes are rasterised with the COCO polygon
rasteriser itself (``pycocotools``), so an unoccluded one is stored as its polygon and decodes
exactly; an occluded one is stored as the RLE of its visible part.

``write_shapesref(root)`` writes the "refer" layout read by ``tfds_refcoco`` (config
``shapesref``)::

    root/shapesref/instances.json          COCO style: images, annotations, categories
    root/shapesref/refs(unc).p             pickle (protocol 2): list of refs
    root/shapesref/images/shapesref_XXXXXX.png
    root/shapesref/shapesref_config.json   stamp written last (config + counts)

Splits: ``train`` and ``val`` mix the three kinds, ``testA`` has attribute expressions only,
``testB`` position and relation expressions only.

For training an image-text-matching model: ``generate_scene``, ``make_ref`` / ``describe``,
``matching_pairs`` (positives and verified-false hard negatives) and ``sample_training_example``.
Expressions are also available as structures (`Expression`), with a parser for the generated
grammar (`parse_expression`) and a truth evaluator (`expression_truth`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

FORMAT_VERSION = 1
DATASET_DIR = "shapesref"
REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
STAMP_FILE = "shapesref_config.json"
IMAGE_DIR = "images"

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
KINDS: tuple[str, ...] = ("attribute", "position", "relation")
SPLIT_KINDS: dict[str, tuple[str, ...]] = {
    "train": KINDS,
    "val": KINDS,
    "testA": ("attribute",),
    "testB": ("position", "relation"),
}

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
ROUND_SHAPES = frozenset({"circle"})
SIZES: tuple[str, ...] = ("small", "large")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 210, 45),
    "purple": (145, 55, 185),
    "cyan": (45, 200, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
POSITIONS: tuple[str, ...] = DIRECTIONS + ("top left", "top right", "bottom left", "bottom right")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
BACKGROUNDS: tuple[str, ...] = ("gradient", "stripes", "noise")


# --------------------------------------------------------------------------------------------
# Configuration and data structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesRefConfig:
    """Every knob of the generator. Frozen and hashable; stored in the build stamp.

    Radii are fractions of ``image_size`` (half-extent of a shape); ``position_margin`` is the
    fraction of ``image_size`` by which a target must be more extreme than every other candidate
    (and the minimum centre offset of a relation).
    """

    image_size: int = 64
    num_train: int = 2000
    num_val: int = 200
    num_test_a: int = 200
    num_test_b: int = 200
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 6
    max_refs_per_image: int = 3
    shapes: tuple[str, ...] = SHAPE_NAMES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    small_radius: tuple[float, float] = (0.08, 0.10)
    large_radius: tuple[float, float] = (0.15, 0.18)
    min_visible: float = 0.5
    min_visible_target: float = 0.8
    position_margin: float = 0.08
    pixel_noise: float = 6.0
    colour_jitter: int = 12

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError("need 2 <= min_objects <= max_objects")
        if self.max_refs_per_image < 1:
            raise ValueError("max_refs_per_image must be >= 1")
        bad = [s for s in self.shapes if s not in SHAPE_NAMES]
        if bad or len(set(self.shapes)) < 2:
            raise ValueError(f"shapes must be >= 2 distinct of {SHAPE_NAMES}, got {self.shapes}")
        bad = [c for c in self.colours if c not in COLOUR_RGB]
        if bad or len(set(self.colours)) < 2:
            raise ValueError(f"colours must be >= 2 distinct of {tuple(COLOUR_RGB)}")
        if any(n < 0 for n in self.num_images.values()):
            raise ValueError("image counts must be >= 0")

    @property
    def num_images(self) -> dict[str, int]:
        """Images per split, in `SPLITS` order."""
        return {
            "train": self.num_train,
            "val": self.num_val,
            "testA": self.num_test_a,
            "testB": self.num_test_b,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


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


@dataclass(eq=False)
class SceneObject:
    """One drawn shape. ``center`` is (x, y) in pixels (pixel i spans [i, i+1))."""

    shape: str
    colour: str
    size: str
    center: tuple[float, float]
    radius: float
    polygon: tuple[float, ...] | None  # flat x0,y0,x1,y1,... for polygonal shapes
    full_mask: np.ndarray  # bool HxW, the whole shape
    mask: np.ndarray  # bool HxW, the visible part (what is annotated)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def visible_fraction(self) -> float:
        return float(self.mask.sum()) / max(1, int(self.full_mask.sum()))

    @property
    def occluded(self) -> bool:
        return bool((self.full_mask != self.mask).any())

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, w, h] of the visible mask."""
        ys, xs = np.nonzero(self.mask)
        x0, y0 = int(xs.min()), int(ys.min())
        return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


@dataclass(eq=False)
class Scene:
    """A rendered scene. Objects are in paint order (later ones occlude earlier ones).

    ``targets`` lists the objects that have a valid expression of ``kind`` (the designed target
    first).
    """

    image: np.ndarray  # uint8 HxWx3
    objects: list[SceneObject]
    kind: str
    targets: tuple[int, ...]
    background: str
    config: ShapesRefConfig = field(repr=False)


@dataclass(eq=False)
class Ref:
    """A referring expression for ``scene.objects[target]``: one `Expression` per sentence."""

    scene: Scene
    target: int
    kind: str
    expressions: list[Expression]
    sentences: list[str]


# --------------------------------------------------------------------------------------------
# Geometry and semantics
# --------------------------------------------------------------------------------------------


def _matching(scene: Scene, desc: Desc) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if desc.matches(o)]


def _key(obj: SceneObject, direction: str) -> float:
    """Smaller = more extreme in ``direction`` (image y grows downwards)."""
    x, y = obj.center
    return {"left": x, "right": -x, "top": y, "bottom": -y}[direction]


def _is_extreme(scene: Scene, target: int, cands: Sequence[int], position: str) -> bool:
    margin = scene.config.position_margin * scene.config.image_size
    t = scene.objects[target]
    for direction in position.split():
        for c in cands:
            if c != target and _key(t, direction) + margin > _key(scene.objects[c], direction):
                return False
    return True


def _region_truth(obj: SceneObject, position: str, size: int) -> bool | None:
    """Absolute position in the image for a single candidate: True / False / None (unclear)."""
    x, y = obj.center
    verdicts = []
    for direction in position.split():
        v = {"left": x, "right": size - x, "top": y, "bottom": size - y}[direction] / size
        verdicts.append(True if v <= 0.4 else False if v >= 0.55 else None)
    if any(v is False for v in verdicts):
        return False
    return True if all(v is True for v in verdicts) else None


def _relation_offsets(a: SceneObject, b: SceneObject, relation: str) -> tuple[float, float]:
    """(distance along the relation's direction, perpendicular distance) of a w.r.t. b."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    perp = abs(dy) if relation in ("left of", "right of") else abs(dx)
    return along, perp


def relation_holds(a: SceneObject, b: SceneObject, relation: str, margin: float) -> bool:
    """Strict: ``a`` is ``relation`` ``b`` by at least ``margin``, within a 45-degree cone."""
    along, perp = _relation_offsets(a, b, relation)
    return along >= margin and perp <= along


def relation_possible(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """Loose: someone could call ``a`` ``relation`` ``b`` (superset of `relation_holds`)."""
    along, perp = _relation_offsets(a, b, relation)
    return along > 0 and perp <= 2 * along


def resolve_expression(scene: Scene, expr: Expression) -> list[int]:
    """Indices of the objects the expression refers to (strict semantics).

    Plain description: all matches. Position: with >= 2 matches, the one extreme by the margin in
    every direction of the position; with one match, it if it lies in that part of the image.
    Relation: the matches that strictly stand in the relation to some landmark match.
    """
    cands = _matching(scene, expr.desc)
    if expr.relation is not None:
        assert expr.landmark is not None
        margin = scene.config.position_margin * scene.config.image_size
        lms = _matching(scene, expr.landmark)
        return [
            c
            for c in cands
            if any(
                relation_holds(scene.objects[c], scene.objects[lm], expr.relation, margin)
                for lm in lms
                if lm != c
            )
        ]
    if expr.position is not None:
        if len(cands) == 1:
            ok = _region_truth(scene.objects[cands[0]], expr.position, scene.config.image_size)
            return cands if ok else []
        return [c for c in cands if _is_extreme(scene, c, cands, expr.position)]
    return cands


def refers_uniquely(scene: Scene, expr: Expression, target: int) -> bool:
    """True iff the expression picks exactly ``target`` with a clear margin.

    For relations, every other match must also fail the loose relation to every landmark match.
    """
    if resolve_expression(scene, expr) != [target]:
        return False
    if expr.relation is not None:
        assert expr.landmark is not None
        lms = _matching(scene, expr.landmark)
        for c in _matching(scene, expr.desc):
            if c != target and any(
                relation_possible(scene.objects[c], scene.objects[lm], expr.relation)
                for lm in lms
                if lm != c
            ):
                return False
    return True


def expression_truth(scene: Scene, expr: Expression) -> bool | None:
    """Whether the expression is true of the image: True, False, or None (borderline).

    False means clearly false (used to certify hard negatives): no object fits the description;
    or a single fitting object lies clearly in another part of the image; or no fitting object
    is even loosely in the relation to any fitting landmark. With two or more fitting objects a
    position is never False (one of them is always the most extreme).
    """
    cands = _matching(scene, expr.desc)
    if not cands:
        return False
    if expr.relation is not None:
        assert expr.landmark is not None
        lms = _matching(scene, expr.landmark)
        margin = scene.config.position_margin * scene.config.image_size
        pairs = [(scene.objects[c], scene.objects[lm]) for c in cands for lm in lms if c != lm]
        if any(relation_holds(a, b, expr.relation, margin) for a, b in pairs):
            return True
        if any(relation_possible(a, b, expr.relation) for a, b in pairs):
            return None
        return False
    if expr.position is not None:
        if len(cands) == 1:
            return _region_truth(scene.objects[cands[0]], expr.position, scene.config.image_size)
        return True if resolve_expression(scene, expr) else None
    return True


def _descs(obj: SceneObject) -> list[Desc]:
    """Descriptions of ``obj`` that name its shape, fewest attributes first."""
    s, c, z = obj.shape, obj.colour, obj.size
    return [Desc(s), Desc(s, c), Desc(s, None, z), Desc(s, c, z)]


def candidate_expressions(scene: Scene, target: int, kind: str) -> list[Expression]:
    """All valid expressions of ``kind`` for ``scene.objects[target]``.

    Valid means unambiguous (`refers_uniquely`) and needing its kind's information: the
    description alone (attribute: the bare shape) matches two or more objects; relations also
    need two or more matches besides the landmark and a landmark description that is unique.
    Empty if the target is not visible enough.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    obj = scene.objects[target]
    if obj.visible_fraction < scene.config.min_visible_target:
        return []
    out: list[Expression] = []
    if kind == "attribute":
        if len(_matching(scene, Desc(obj.shape))) < 2:
            return []
        for d in _descs(obj)[1:]:
            expr = Expression(d)
            if refers_uniquely(scene, expr, target):
                out.append(expr)
    elif kind == "position":
        for d in [*_descs(obj), Desc(None, obj.colour)]:
            cands = _matching(scene, d)
            if len(cands) < 2:
                continue
            for p in POSITIONS:
                expr = Expression(d, position=p)
                if refers_uniquely(scene, expr, target):
                    out.append(expr)
    else:
        landmarks: list[tuple[int, Desc]] = []
        for j, lm_obj in enumerate(scene.objects):
            if j == target:
                continue
            landmarks += [(j, d) for d in _descs(lm_obj) if _matching(scene, d) == [j]]
        for d in _descs(obj):
            cands = _matching(scene, d)
            for j, ld in landmarks:
                if len([c for c in cands if c != j]) < 2:
                    continue
                for r in RELATIONS:
                    expr = Expression(d, relation=r, landmark=ld)
                    if refers_uniquely(scene, expr, target):
                        out.append(expr)
    return out


# --------------------------------------------------------------------------------------------
# Language: phrasing and parsing
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> tuple[float, ...]:
    if shape == "square":
        a = 0.85 * r
        pts = [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
    else:
        raise ValueError(f"not a polygonal shape: {shape}")
    return tuple(round(float(v), 2) for p in pts for v in p)


def _decode(rle: Any) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _rasterise(shape: str, cx: float, cy: float, r: float, size: int):
    """(bool mask, polygon or None). Polygons use the COCO rasteriser so they decode exactly."""
    if shape in ROUND_SHAPES:
        yy, xx = np.mgrid[0:size, 0:size]
        mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        return mask, None
    poly = _shape_polygon(shape, cx, cy, r)
    rles = mask_utils.frPyObjects([list(poly)], size, size)
    return _decode(mask_utils.merge(rles)), poly


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70.0, 160.0)
    return np.clip(grey + rng.uniform(-14.0, 14.0, 3), 40.0, 185.0)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c1 = _muted_colour(rng)
    if kind == "gradient":
        c2 = _muted_colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == "stripes":
        c2 = np.clip(c1 + rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 40.0), 30.0, 200.0)
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 12.0)
        t = ((xx * np.cos(ang) + yy * np.sin(ang)) / period) % 1.0 < 0.5
        img = np.where(t[..., None], c1, c2)
    else:  # smooth value noise, bilinearly upsampled from a coarse grid
        k = int(rng.integers(3, 9))
        coarse = (
            rng.uniform(-30.0, 30.0, (k + 1, k + 1, 3)) + rng.uniform(-1, 1, (k + 1, k + 1, 1)) * 10
        )
        u = xx / (size - 1) * k
        v = yy / (size - 1) * k
        i0 = np.minimum(np.floor(v).astype(int), k - 1)
        j0 = np.minimum(np.floor(u).astype(int), k - 1)
        fv, fu = (v - i0)[..., None], (u - j0)[..., None]
        n = (
            coarse[i0, j0] * (1 - fv) * (1 - fu)
            + coarse[i0 + 1, j0] * fv * (1 - fu)
            + coarse[i0, j0 + 1] * (1 - fv) * fu
            + coarse[i0 + 1, j0 + 1] * fv * fu
        )
        img = c1 + n
    return img, kind


# --------------------------------------------------------------------------------------------
# Scene generation
# --------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    shape: str
    colour: str
    size: str
    radius: float = 0.0
    center: tuple[float, float] | None = None


def _choice(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _other(rng: np.random.Generator, seq: Sequence[Any], not_this: Any) -> Any:
    return _choice(rng, [s for s in seq if s != not_this])


def _specs_for(
    rng: np.random.Generator, cfg: ShapesRefConfig, kind: str
) -> tuple[list[_Spec], int]:
    """Object specs (target first, then designed distractors, then fillers), and landmark index."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if kind == "relation":
        n = max(n, 3)
    target = _Spec(_choice(rng, cfg.shapes), _choice(rng, cfg.colours), _choice(rng, SIZES))
    specs = [target]
    landmark = -1
    if kind == "relation":
        specs.append(
            _Spec(
                _other(rng, cfg.shapes, target.shape),
                _choice(rng, cfg.colours),
                _choice(rng, SIZES),
            )
        )
        landmark = 1
    k = int(rng.integers(1, min(2, n - len(specs)) + 1))
    for _ in range(k):
        if kind == "attribute":
            mode = _choice(rng, ("colour", "size", "both"))
            colour = target.colour if mode == "size" else _other(rng, cfg.colours, target.colour)
            size = target.size if mode == "colour" else _other(rng, SIZES, target.size)
        else:  # same-class, same-colour distractors: only position/relation tells them apart
            colour = target.colour
            size = target.size if rng.random() < 0.7 else _other(rng, SIZES, target.size)
        specs.append(_Spec(target.shape, colour, size))
    while len(specs) < n:
        specs.append(
            _Spec(_choice(rng, cfg.shapes), _choice(rng, cfg.colours), _choice(rng, SIZES))
        )
    for s in specs:
        lo, hi = cfg.small_radius if s.size == "small" else cfg.large_radius
        s.radius = float(rng.uniform(lo, hi)) * cfg.image_size
    return specs, landmark


def _in_bounds(c: tuple[float, float], r: float, size: int) -> bool:
    return all(r + 1 <= v <= size - r - 1 for v in c)


def _place(
    rng: np.random.Generator, specs: list[_Spec], cfg: ShapesRefConfig, landmark: int
) -> bool:
    size = cfg.image_size
    placed: list[_Spec] = []

    def free(c: tuple[float, float], r: float) -> bool:
        return all(
            np.hypot(c[0] - p.center[0], c[1] - p.center[1]) >= 0.6 * (r + p.radius) for p in placed
        )

    if landmark >= 0:  # put the target in a relation to the landmark
        lm, tg = specs[landmark], specs[0]
        lm.center = tuple(float(v) for v in rng.uniform(lm.radius + 1, size - lm.radius - 1, 2))
        rel = _choice(rng, RELATIONS)
        dist = rng.uniform(0.8 * (lm.radius + tg.radius), lm.radius + tg.radius + 0.3 * size)
        dist = max(dist, cfg.position_margin * size + 1)
        along = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}[rel]
        perp = rng.uniform(-0.6, 0.6) * dist
        c = (
            lm.center[0] + along[0] * dist + along[1] * perp,
            lm.center[1] + along[1] * dist + along[0] * perp,
        )
        if not _in_bounds(c, tg.radius, size):
            return False
        tg.center = (float(c[0]), float(c[1]))
        placed += [lm, tg]
    for s in specs:
        if s.center is not None:
            continue
        for _ in range(30):
            c = tuple(float(v) for v in rng.uniform(s.radius + 1, size - s.radius - 1, 2))
            if free(c, s.radius):
                s.center = c
                break
        else:
            return False
        placed.append(s)
    return True


def _try_scene(rng: np.random.Generator, cfg: ShapesRefConfig, kind: str) -> Scene | None:
    specs, landmark = _specs_for(rng, cfg, kind)
    if not _place(rng, specs, cfg, landmark):
        return None
    order = rng.permutation(len(specs))
    size = cfg.image_size
    objects = []
    for i in order:
        s = specs[i]
        assert s.center is not None
        mask, poly = _rasterise(s.shape, s.center[0], s.center[1], s.radius, size)
        objects.append(SceneObject(s.shape, s.colour, s.size, s.center, s.radius, poly, mask, mask))
    covered = np.zeros((size, size), bool)
    for o in reversed(objects):
        o.mask = o.full_mask & ~covered
        covered |= o.full_mask
    if any(o.visible_fraction < cfg.min_visible or o.area == 0 for o in objects):
        return None
    designed = int(np.nonzero(order == 0)[0][0])
    scene = Scene(np.zeros((size, size, 3), np.uint8), objects, kind, (), "", cfg)
    if not candidate_expressions(scene, designed, kind):
        return None
    others = [
        i for i in range(len(objects)) if i != designed and candidate_expressions(scene, i, kind)
    ]
    scene.targets = (designed, *others)
    img, scene.background = _background(rng, size)
    for o in objects:
        rgb = np.asarray(COLOUR_RGB[o.colour], np.float64)
        img[o.full_mask] = rgb + rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, 3)
    img = img + rng.normal(0.0, cfg.pixel_noise, img.shape)
    scene.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return scene


def generate_scene(
    rng: np.random.Generator,
    config: ShapesRefConfig = ShapesRefConfig(),  # noqa: B008 (frozen, immutable)
    kind: str = "attribute",
    max_tries: int = 500,
) -> Scene:
    """Draws a scene built for expressions of ``kind`` ('attribute', 'position', 'relation').

    The scene holds same-class distractors so that the designed target (``scene.targets[0]``)
    is ambiguous without its attribute / position / relation, and is guaranteed at least one
    valid expression of ``kind``. Raises RuntimeError if no scene is found in ``max_tries``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for _ in range(max_tries):
        scene = _try_scene(rng, config, kind)
        if scene is not None:
            return scene
    raise RuntimeError(f"no {kind} scene found in {max_tries} tries; config too tight? {config}")


def make_ref(
    scene: Scene, target_index: int, rng: np.random.Generator, kind: str | None = None
) -> Ref:
    """Picks an expression of ``kind`` (default ``scene.kind``) for the target and 2-3 sentences.

    Sentences are distinct phrasings of the chosen expression, topped up from other valid
    expressions of the same kind. Raises ValueError if the target has no valid expression.
    """
    kind = scene.kind if kind is None else kind
    cands = candidate_expressions(scene, target_index, kind)
    if not cands:
        raise ValueError(f"object {target_index} has no valid {kind} expression")

    # Prefer short descriptions that name the shape (and single directions); sometimes any.
    def cost(e: Expression) -> int:
        c = e.desc.num_attributes + 2 * (e.desc.shape is None)
        c += 0 if e.landmark is None else e.landmark.num_attributes
        return c + (2 if e.position is not None and e.position not in DIRECTIONS else 0)

    if rng.random() < 0.8:
        best = min(cost(e) for e in cands)
        primary_pool = [e for e in cands if cost(e) == best]
    else:
        primary_pool = cands
    primary = _choice(rng, primary_pool)
    n_sent = int(rng.integers(2, 4))
    forms = phrasings(primary)
    pairs = [(primary, forms[i]) for i in rng.permutation(len(forms))[:n_sent]]
    rest = [e for e in cands if e != primary]
    if n_sent == 3 and rest and rng.random() < 0.5:  # last sentence from another valid expression
        alt = _choice(rng, rest)
        alt_forms = [f for f in phrasings(alt) if f not in {s for _, s in pairs}]
        if alt_forms:
            pairs[-1] = (alt, _choice(rng, alt_forms))
    return Ref(scene, target_index, kind, [e for e, _ in pairs], [s for _, s in pairs])


def describe(
    scene: Scene, target_index: int, rng: np.random.Generator, kind: str | None = None
) -> list[str]:
    """2-3 unambiguous sentences of ``kind`` for ``scene.objects[target_index]``."""
    return make_ref(scene, target_index, rng, kind).sentences


# --------------------------------------------------------------------------------------------
# Image-text matching pairs
# --------------------------------------------------------------------------------------------


def perturbations(expr: Expression, cfg: ShapesRefConfig) -> dict[str, list[Expression]]:
    """One-word variants of ``expr`` by type: "colour", "shape", "size", "position" (a position
    word flipped), "relation" (another relation), "landmark" (the landmark's colour or shape).
    Not checked against any scene: `expression_truth` certifies which are false."""
    d = expr.desc
    rep = dataclasses.replace
    out: dict[str, list[Expression]] = {k: [] for k in ("colour", "shape", "size", "position")}
    out.update({"relation": [], "landmark": []})
    for c in cfg.colours:
        if c != d.colour and (d.colour is not None or d.shape is not None):
            out["colour"].append(rep(expr, desc=rep(d, colour=c)))
    for s in cfg.shapes:
        if d.shape is not None and s != d.shape:
            out["shape"].append(rep(expr, desc=rep(d, shape=s)))
    for z in SIZES:
        if z != d.size:
            out["size"].append(rep(expr, desc=rep(d, size=z)))
    if expr.position is not None:
        parts = expr.position.split()
        flips = [
            [OPPOSITE[p] if j == i else p for j, p in enumerate(parts)] for i in range(len(parts))
        ]
        if len(parts) > 1:
            flips.append([OPPOSITE[p] for p in parts])
        out["position"] = [rep(expr, position=" ".join(f)) for f in flips]
    if expr.relation is not None:
        lm = expr.landmark
        assert lm is not None
        out["relation"] = [rep(expr, relation=r) for r in RELATIONS if r != expr.relation]
        for c in cfg.colours:
            if c != lm.colour:
                out["landmark"].append(rep(expr, landmark=rep(lm, colour=c)))
        for s in cfg.shapes:
            if s != lm.shape:
                out["landmark"].append(rep(expr, landmark=rep(lm, shape=s)))
    return out


def _absent_combinations(scene: Scene) -> list[Expression]:
    cfg = scene.config
    out = [Expression(Desc(s, c)) for s in cfg.shapes for c in cfg.colours]
    out += [Expression(Desc(s, c, z)) for s in cfg.shapes for c in cfg.colours for z in SIZES]
    return [e for e in out if not _matching(scene, e.desc)]


def matching_expressions(
    scene_or_ref: Scene | Ref, rng: np.random.Generator, max_negatives: int = 8
) -> tuple[list[Expression], list[Expression]]:
    """Structured form of `matching_pairs`: (positive, hard negative) expressions.

    Positives refer uniquely to the ref's target: its expressions, the full description when
    unique, and the description with an absolute position when the target is the only match and
    lies clearly in that part of the image. Negatives swap colour / shape / size / position word
    / relation / landmark attribute, or name an attribute combination absent from the scene;
    each is certified clearly false in the scene by `expression_truth`.
    """
    ref = (
        make_ref(scene_or_ref, _choice(rng, scene_or_ref.targets), rng)
        if isinstance(scene_or_ref, Scene)
        else scene_or_ref
    )
    scene, target = ref.scene, ref.target
    obj = scene.objects[target]
    positives = list(dict.fromkeys(ref.expressions))
    full = Desc(obj.shape, obj.colour, obj.size)
    extra: list[Expression] = []
    for d in _descs(obj)[1:]:
        if _matching(scene, d) == [target]:
            extra.append(Expression(d))
            extra += [Expression(d, position=p) for p in DIRECTIONS]
    if _matching(scene, full) == [target]:
        extra.append(Expression(full))
    for e in extra:
        if e not in positives and refers_uniquely(scene, e, target):
            positives.append(e)
    groups: dict[str, list[Expression]] = {}
    for e in positives:
        for k, v in perturbations(e, scene.config).items():
            groups.setdefault(k, []).extend(v)
    groups["absent"] = _absent_combinations(scene)
    pos_set = set(positives)
    shuffled = []
    for k in sorted(groups):
        cand = [e for e in dict.fromkeys(groups[k]) if e not in pos_set]
        cand = [cand[i] for i in rng.permutation(len(cand))]
        cand = [e for e in cand[: 4 * max_negatives] if expression_truth(scene, e) is False]
        if cand:
            shuffled.append(cand)
    negatives: list[Expression] = []
    order = [shuffled[i] for i in rng.permutation(len(shuffled))]
    while len(negatives) < max_negatives and any(order):
        for group in order:
            if group and len(negatives) < max_negatives:
                negatives.append(group.pop(0))
    return positives, negatives


def matching_pairs(
    scene_or_ref: Scene | Ref, rng: np.random.Generator, max_negatives: int = 8
) -> tuple[list[str], list[str]]:
    """(positive_texts, hard_negative_texts) for image-text matching on one scene.

    Given a `Scene`, a ref is drawn for one of its targets. Positive texts are the ref's
    sentences plus a phrasing of each extra positive; negatives (at most ``max_negatives``) are
    one random phrasing of each certified-false perturbation (see `matching_expressions`).
    """
    ref = (
        make_ref(scene_or_ref, _choice(rng, scene_or_ref.targets), rng)
        if isinstance(scene_or_ref, Scene)
        else scene_or_ref
    )
    pos_exprs, neg_exprs = matching_expressions(ref, rng, max_negatives)
    positives = list(ref.sentences)
    for e in pos_exprs:
        if e not in ref.expressions:
            positives.append(_choice(rng, phrasings(e)))
    negatives = [_choice(rng, phrasings(e)) for e in neg_exprs]
    positives = list(dict.fromkeys(positives))
    negatives = [t for t in dict.fromkeys(negatives) if t not in positives]
    return positives, negatives


def sample_training_example(
    rng: np.random.Generator,
    config: ShapesRefConfig = ShapesRefConfig(),  # noqa: B008 (frozen, immutable)
) -> tuple[np.ndarray, str, int]:
    """One ITM training example: (image uint8 HxWx3, text, label 1 = match / 0 = mismatch).

    Labels are 50/50. Mismatches are hard negatives of this scene (70%) or an expression of
    another scene that is clearly false in this one (30%); if none is found, an attribute
    combination absent from the scene.
    """
    scene = generate_scene(rng, config, _choice(rng, KINDS))
    ref = make_ref(scene, _choice(rng, scene.targets), rng)
    if rng.random() < 0.5:
        positives, _ = matching_pairs(ref, rng, max_negatives=0)
        return scene.image, _choice(rng, positives), 1
    if rng.random() < 0.7:
        _, negatives = matching_pairs(ref, rng, max_negatives=4)
        if negatives:
            return scene.image, _choice(rng, negatives), 0
    for _ in range(5):
        other = generate_scene(rng, config, _choice(rng, KINDS))
        oref = make_ref(other, _choice(rng, other.targets), rng)
        false = [
            (e, s)
            for e, s in zip(oref.expressions, oref.sentences, strict=True)
            if expression_truth(scene, e) is False
        ]
        if false:
            return scene.image, _choice(rng, false)[1], 0
    return scene.image, _choice(rng, phrasings(_choice(rng, _absent_combinations(scene)))), 0


# --------------------------------------------------------------------------------------------
# Writing the refer layout
# --------------------------------------------------------------------------------------------


def image_rng(config: ShapesRefConfig, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (independent of the other splits' sizes)."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


def generate_example(config: ShapesRefConfig, split: str, index: int) -> tuple[Scene, list[Ref]]:
    """Image ``index`` of ``split`` and its 1-``max_refs_per_image`` refs, as `write_shapesref`
    writes them (each ref on a different object, the designed target first)."""
    rng = image_rng(config, split, index)
    kind = _choice(rng, SPLIT_KINDS[split])
    scene = generate_scene(rng, config, kind)
    n_refs = int(rng.integers(1, config.max_refs_per_image + 1))
    others = [scene.targets[1:][i] for i in rng.permutation(len(scene.targets) - 1)]
    targets = [scene.targets[0], *others][:n_refs]
    return scene, [make_ref(scene, t, rng, kind) for t in targets]


def category_id(shape: str) -> int:
    """COCO category id of a shape (fixed across configs)."""
    return SHAPE_NAMES.index(shape) + 1


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool mask with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def segmentation_of(obj: SceneObject) -> list[list[float]] | dict[str, Any]:
    """Polygon for an unoccluded polygonal shape, RLE of the visible mask otherwise."""
    if obj.polygon is not None and not obj.occluded:
        return [list(obj.polygon)]
    return encode_rle(obj.mask)


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Bool mask of a COCO segmentation (polygons, RLE with str, bytes or list counts): the
    refer reader's `tfds_refcoco.refer.decode_segmentation`, as bool."""
    from tfds_refcoco.refer import decode_segmentation as decode

    return decode(seg, height, width).astype(bool)


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _stamp(config: ShapesRefConfig, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config.to_dict()}
    if counts is not None:
        out["counts"] = counts
    return out


def is_complete(dataset_dir: str | Path, config: ShapesRefConfig) -> bool:
    """Whether ``dataset_dir`` holds a finished build of exactly ``config``."""
    d = Path(dataset_dir)
    try:
        stamp = json.loads((d / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("format_version") == FORMAT_VERSION
        and stamp.get("config") == config.to_dict()
        and (d / INSTANCES_FILE).is_file()
        and (d / REFS_FILE).is_file()
    )


def write_shapesref(
    root: str | Path,
    config: ShapesRefConfig = ShapesRefConfig(),  # noqa: B008 (frozen, immutable)
    verbose: bool = False,
) -> Path:
    """Writes ShapesRef in the refer layout under ``root/shapesref`` and returns that directory.

    Idempotent: returns at once if a complete build of the same config is there (the stamp
    ``shapesref_config.json`` is written last). Otherwise rebuilds, removing stale
    ``shapesref_*.png`` images. Image ids, annotation ids, ref ids and sentence ids count from 1
    across the splits in `SPLITS` order.
    """
    out_dir = Path(root) / DATASET_DIR
    if is_complete(out_dir, config):
        return out_dir
    start = time.perf_counter()
    img_dir = out_dir / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_FILE).unlink(missing_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    written: set[str] = set()
    for split in SPLITS:
        n_refs = n_sents = 0
        for index in range(config.num_images[split]):
            scene, scene_refs = generate_example(config, split, index)
            image_id = len(images) + 1
            file_name = f"shapesref_{image_id:06d}.png"
            h, w = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            png = _png_bytes(scene.image)
            path = img_dir / file_name
            if not path.is_file() or path.read_bytes() != png:
                _write_atomic(path, png)
            written.add(file_name)
            ann_ids = []
            for obj in scene.objects:
                ann_ids.append(len(annotations) + 1)
                seg = segmentation_of(obj)
                if not np.array_equal(decode_segmentation(seg, h, w), obj.mask):
                    raise AssertionError(f"segmentation does not decode to the mask ({file_name})")
                annotations.append(
                    {
                        "id": ann_ids[-1],
                        "image_id": image_id,
                        "category_id": category_id(obj.shape),
                        "segmentation": seg,
                        "area": float(obj.area),
                        "bbox": obj.bbox,
                        "iscrowd": 0,
                        "attributes": {"colour": obj.colour, "size": obj.size},
                    }
                )
            for ref in scene_refs:
                first = _next_sent_id(refs)
                sent_ids = list(range(first, first + len(ref.sentences)))
                refs.append(
                    {
                        "ref_id": len(refs) + 1,
                        "ann_id": ann_ids[ref.target],
                        "image_id": image_id,
                        "split": split,
                        "sentences": [
                            {"tokens": s.split(), "raw": s, "sent_id": i, "sent": s}
                            for i, s in zip(sent_ids, ref.sentences, strict=True)
                        ],
                        "sent_ids": sent_ids,
                        "file_name": file_name,
                        "category_id": category_id(scene.objects[ref.target].shape),
                        "kind": ref.kind,
                    }
                )
                n_refs += 1
                n_sents += len(ref.sentences)
        counts[split] = {"images": config.num_images[split], "refs": n_refs, "sentences": n_sents}
    categories = [
        {"id": category_id(s), "name": s, "supercategory": "shape"}
        for s in SHAPE_NAMES
        if s in config.shapes
    ]
    instances = {
        "info": {"description": "ShapesRef procedural referring segmentation", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    _write_atomic(out_dir / INSTANCES_FILE, json.dumps(instances, separators=(",", ":")).encode())
    _write_atomic(out_dir / REFS_FILE, pickle.dumps(refs, protocol=2))
    for stale in img_dir.glob("shapesref_*.png"):
        if stale.name not in written:
            stale.unlink()
    _write_atomic(out_dir / STAMP_FILE, json.dumps(_stamp(config, counts), indent=1).encode())
    if verbose:
        print(f"ShapesRef: wrote {out_dir} in {time.perf_counter() - start:.1f}s: {counts}")
    return out_dir


def _next_sent_id(refs: list[dict[str, Any]]) -> int:
    return refs[-1]["sent_ids"][-1] + 1 if refs else 1


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m iterprime_jax.shapesref ROOT [--seed N] [--image-size S] [--num-train N] ...``"""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="directory to write shapesref/ into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--num-test-a", type=int, default=200)
    p.add_argument("--num-test-b", type=int, default=200)
    a = p.parse_args(argv)
    cfg = ShapesRefConfig(
        image_size=a.image_size,
        num_train=a.num_train,
        num_val=a.num_val,
        num_test_a=a.num_test_a,
        num_test_b=a.num_test_b,
        seed=a.seed,
    )
    write_shapesref(a.root, cfg, verbose=True)


if __name__ == "__main__":
    main()
