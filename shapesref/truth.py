"""ShapesRef semantics: which objects an expression refers to (`resolve_expression`), whether it
refers uniquely, whether it is true of an image (`expression_truth`, which certifies hard
negatives), and every valid expression of a kind for an object (`candidate_expressions`)."""

from __future__ import annotations

from collections.abc import Sequence

from .config import KINDS, POSITIONS, RELATIONS
from .grammar import Desc, Expression
from .scene import Scene, SceneObject


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
