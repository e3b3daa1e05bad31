"""ShapesRef image-text matching pairs for training an ITM model: one-word perturbations of an
expression, positives and certified-false hard negatives of a scene (`matching_expressions`,
`matching_pairs`) and single training examples (`sample_training_example`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .config import DIRECTIONS, KINDS, OPPOSITE, RELATIONS, SIZES, ShapesRefConfig
from .grammar import Desc, Expression, phrasings
from .render import choice, generate_scene, make_ref
from .scene import Ref, Scene
from .truth import _descs, _matching, expression_truth, refers_uniquely


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
        make_ref(scene_or_ref, choice(rng, scene_or_ref.targets), rng)
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
        make_ref(scene_or_ref, choice(rng, scene_or_ref.targets), rng)
        if isinstance(scene_or_ref, Scene)
        else scene_or_ref
    )
    pos_exprs, neg_exprs = matching_expressions(ref, rng, max_negatives)
    positives = list(ref.sentences)
    for e in pos_exprs:
        if e not in ref.expressions:
            positives.append(choice(rng, phrasings(e)))
    negatives = [choice(rng, phrasings(e)) for e in neg_exprs]
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
    scene = generate_scene(rng, config, choice(rng, KINDS))
    ref = make_ref(scene, choice(rng, scene.targets), rng)
    if rng.random() < 0.5:
        positives, _ = matching_pairs(ref, rng, max_negatives=0)
        return scene.image, choice(rng, positives), 1
    if rng.random() < 0.7:
        _, negatives = matching_pairs(ref, rng, max_negatives=4)
        if negatives:
            return scene.image, choice(rng, negatives), 0
    for _ in range(5):
        other = generate_scene(rng, config, choice(rng, KINDS))
        oref = make_ref(other, choice(rng, other.targets), rng)
        false = [
            (e, s)
            for e, s in zip(oref.expressions, oref.sentences, strict=True)
            if expression_truth(scene, e) is False
        ]
        if false:
            return scene.image, choice(rng, false)[1], 0
    return scene.image, choice(rng, phrasings(choice(rng, _absent_combinations(scene)))), 0
