"""ShapesRef scene generation and rendering: object specs and placement, pixel-exact masks
(circles with numpy, polygons with the COCO rasteriser), backgrounds; and drawing a
ref (`make_ref`) for a target of a scene."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .config import (
    BACKGROUNDS,
    COLOUR_RGB,
    DIRECTIONS,
    KINDS,
    RELATIONS,
    ROUND_SHAPES,
    SIZES,
    ShapesRefConfig,
)
from .grammar import Expression, phrasings
from .scene import Ref, Scene, SceneObject
from .truth import candidate_expressions


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> tuple[float, ...]:
    if shape == "square":
        a = 0.85 * r
        pts = [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    elif shape == "triangle":
        pts = [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    elif shape == "cross":
        a, b = r, 0.36 * r
        pts = [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
               (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
               (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
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


def _background(rng: np.random.Generator, size: int, kinds: Sequence[str] = BACKGROUNDS[1:],
                contrast: float | None = None) -> tuple[np.ndarray, str]:
    """(float HxWx3 image, kind): one of ``kinds``; a gradient's second colour is within
    ``contrast`` of the first per channel (None: any muted colour)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c1 = _muted_colour(rng)
    if kind == "flat":
        img = np.broadcast_to(c1, (size, size, 3)).copy()
    elif kind == "gradient":
        c2 = (_muted_colour(rng) if contrast is None
              else np.clip(c1 + rng.uniform(-contrast, contrast, 3), 30.0, 200.0))
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


@dataclass
class _Spec:
    shape: str
    colour: str
    size: str
    radius: float = 0.0
    center: tuple[float, float] | None = None


def choice(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    """One element of `seq`, uniformly, drawn with one ``rng.integers`` call (the draw every
    ShapesRef stream makes: changing it would change the generated files)."""
    return seq[int(rng.integers(len(seq)))]


def _other(rng: np.random.Generator, seq: Sequence[Any], not_this: Any) -> Any:
    return choice(rng, [s for s in seq if s != not_this])


def _specs_for(
    rng: np.random.Generator, cfg: ShapesRefConfig, kind: str
) -> tuple[list[_Spec], int]:
    """Object specs (target first, then designed distractors, then fillers), and landmark index."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if kind == "relation":
        n = max(n, 3)
    target = _Spec(choice(rng, cfg.shapes), choice(rng, cfg.colours), choice(rng, SIZES))
    specs = [target]
    landmark = -1
    if kind == "relation":
        specs.append(
            _Spec(
                _other(rng, cfg.shapes, target.shape),
                choice(rng, cfg.colours),
                choice(rng, SIZES),
            )
        )
        landmark = 1
    k = int(rng.integers(1, min(2, n - len(specs)) + 1))
    for _ in range(k):
        if kind == "attribute":
            mode = choice(rng, ("colour", "size", "both"))
            colour = target.colour if mode == "size" else _other(rng, cfg.colours, target.colour)
            size = target.size if mode == "colour" else _other(rng, SIZES, target.size)
        else:  # same-class, same-colour distractors: only position/relation tells them apart
            colour = target.colour
            size = target.size if rng.random() < 0.7 else _other(rng, SIZES, target.size)
        specs.append(_Spec(target.shape, colour, size))
    while len(specs) < n:
        specs.append(
            _Spec(choice(rng, cfg.shapes), choice(rng, cfg.colours), choice(rng, SIZES))
        )
    for s in specs:
        lo, hi = cfg.small_radius if s.size == "small" else cfg.large_radius
        s.radius = float(rng.uniform(lo, hi)) * cfg.image_size
    return specs, landmark


def _in_bounds(c: tuple[float, float], r: float, size: int) -> bool:
    return all(r + 1 <= v <= size - r - 1 for v in c)


def _place_grid(
    rng: np.random.Generator, specs: list[_Spec], cfg: ShapesRefConfig, landmark: int
) -> bool:
    """One object per cell of a ``grid`` x ``grid`` layout, centred in its cell up to
    ``jitter`` (fraction of a cell). A relation's target goes k cells from its landmark along
    the relation and at most k-1 cells across it (inside the relation's 45-degree cone). The
    outer ``grid_margin`` rings of cells stay empty."""
    g, m = cfg.grid, cfg.grid_margin
    cell = cfg.image_size / g
    free = [(r, c) for r in range(m, g - m) for c in range(m, g - m)]
    chosen: dict[int, tuple[int, int]] = {}
    if landmark >= 0:
        lm = free[int(rng.integers(len(free)))]
        rel = choice(rng, RELATIONS)
        k = int(rng.integers(1, g - 2 * m))
        j = int(rng.integers(-(k - 1), k)) if k > 1 else 0
        dr, dc = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}[rel]
        tg = (lm[0] + dr * k + dc * j, lm[1] + dc * k + dr * j)
        if not (m <= tg[0] < g - m and m <= tg[1] < g - m):
            return False
        chosen = {landmark: lm, 0: tg}
        free = [f for f in free if f not in (lm, tg)]
    for i in range(len(specs)):
        if i in chosen:
            continue
        if not free:
            return False
        chosen[i] = free.pop(int(rng.integers(len(free))))
    jit = cfg.jitter * cell
    for i, s in enumerate(specs):
        r, c = chosen[i]
        dx, dy = rng.uniform(-jit, jit, 2)
        s.center = (float((c + 0.5) * cell + dx), float((r + 0.5) * cell + dy))
    return True


def _place(
    rng: np.random.Generator, specs: list[_Spec], cfg: ShapesRefConfig, landmark: int
) -> bool:
    if cfg.grid:
        return _place_grid(rng, specs, cfg, landmark)
    size = cfg.image_size
    placed: list[_Spec] = []

    def free(c: tuple[float, float], r: float) -> bool:
        return all(
            np.hypot(c[0] - p.center[0], c[1] - p.center[1]) >= 0.6 * (r + p.radius) for p in placed
        )

    if landmark >= 0:  # put the target in a relation to the landmark
        lm, tg = specs[landmark], specs[0]
        lm.center = tuple(float(v) for v in rng.uniform(lm.radius + 1, size - lm.radius - 1, 2))
        rel = choice(rng, RELATIONS)
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
    img, scene.background = _background(rng, size, cfg.backgrounds, cfg.background_contrast)
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
    primary = choice(rng, primary_pool)
    n_sent = int(rng.integers(2, 4))
    forms = phrasings(primary)
    pairs = [(primary, forms[i]) for i in rng.permutation(len(forms))[:n_sent]]
    rest = [e for e in cands if e != primary]
    if n_sent == 3 and rest and rng.random() < 0.5:  # last sentence from another valid expression
        alt = choice(rng, rest)
        alt_forms = [f for f in phrasings(alt) if f not in {s for _, s in pairs}]
        if alt_forms:
            pairs[-1] = (alt, choice(rng, alt_forms))
    return Ref(scene, target_index, kind, [e for e, _ in pairs], [s for _, s in pairs])


def describe(
    scene: Scene, target_index: int, rng: np.random.Generator, kind: str | None = None
) -> list[str]:
    """2-3 unambiguous sentences of ``kind`` for ``scene.objects[target_index]``."""
    return make_ref(scene, target_index, rng, kind).sentences
