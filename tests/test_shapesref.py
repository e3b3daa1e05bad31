"""Tests of the ShapesRef generator (shapesref): layout, exact masks, semantics."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import shapesref as sr

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CFG = sr.ShapesRefConfig(num_train=12, num_val=6, num_test_a=8, num_test_b=8, seed=7)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sr.write_shapesref(tmp_path_factory.mktemp("a"), CFG)


@pytest.fixture(scope="module")
def data(built: Path) -> tuple[dict, list[dict]]:
    inst = json.loads((built / "instances.json").read_text())
    with open(built / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    return inst, refs


@pytest.fixture(scope="module")
def examples() -> list[tuple[str, int, sr.Scene, list[sr.Ref]]]:
    out = []
    for split in sr.SPLITS:
        for i in range(CFG.num_images[split]):
            scene, refs = sr.generate_example(CFG, split, i)
            out.append((split, i, scene, refs))
    return out


def _decode(seg, h: int, w: int) -> np.ndarray:
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


# ---------------------------------------------------------------------------------------------
# Files and layout
# ---------------------------------------------------------------------------------------------


def test_deterministic_and_idempotent(built: Path, tmp_path: Path) -> None:
    other = sr.write_shapesref(tmp_path, CFG)
    for name in ("instances.json", "refs(unc).p", "shapesref_config.json"):
        assert (built / name).read_bytes() == (other / name).read_bytes(), name
    pngs = sorted(p.name for p in (built / "images").iterdir())
    assert pngs == sorted(p.name for p in (other / "images").iterdir())
    assert len(pngs) == sum(CFG.num_images.values())
    for name in pngs:
        assert (built / "images" / name).read_bytes() == (other / "images" / name).read_bytes()
    # Idempotent: a complete build is left alone.
    stamp = other / "shapesref_config.json"
    before = stamp.stat().st_mtime_ns
    assert sr.is_complete(other, CFG)
    assert sr.write_shapesref(tmp_path, CFG) == other
    assert stamp.stat().st_mtime_ns == before
    # Another config rebuilds in place and drops stale images.
    small = sr.ShapesRefConfig(num_train=3, num_val=1, num_test_a=1, num_test_b=1, seed=8)
    assert not sr.is_complete(other, small)
    sr.write_shapesref(tmp_path, small)
    assert len(list((other / "images").iterdir())) == 6
    assert (other / "instances.json").read_bytes() != (built / "instances.json").read_bytes()


def test_layout_and_links(built: Path, data: tuple[dict, list[dict]]) -> None:
    inst, refs = data
    assert {"images", "annotations", "categories"} <= set(inst)
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    cats = {c["id"]: c for c in inst["categories"]}
    assert {c["name"] for c in cats.values()} == set(CFG.shapes)
    for im in images.values():
        with Image.open(built / "images" / im["file_name"]) as pil:
            assert pil.size == (im["width"], im["height"]) == (CFG.image_size,) * 2
            assert pil.mode == "RGB"
    for a in anns.values():
        assert a["image_id"] in images and a["category_id"] in cats and a["iscrowd"] == 0
        assert len(a["bbox"]) == 4 and a["area"] > 0
    sent_ids: list[int] = []
    refs_per_image: dict[int, list[int]] = {}
    for r in refs:
        assert set(r) >= {
            "ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "file_name",
            "category_id",
        }  # fmt: skip
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and r["image_id"] in images
        assert r["category_id"] == ann["category_id"]
        assert r["file_name"] == images[r["image_id"]]["file_name"]
        assert 2 <= len(r["sentences"]) <= 3
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert set(s) == {"tokens", "raw", "sent_id", "sent"}
            assert s["sent"] == s["sent"].lower() and s["tokens"] == s["sent"].split()
        assert len({s["sent"] for s in r["sentences"]}) == len(r["sentences"])
        sent_ids += r["sent_ids"]
        refs_per_image.setdefault(r["image_id"], []).append(r["ann_id"])
    assert len(set(sent_ids)) == len(sent_ids)
    assert len({r["ref_id"] for r in refs}) == len(refs)
    assert set(refs_per_image) == set(images)  # every image has refs
    for ann_ids in refs_per_image.values():  # 1-3 refs, on different objects
        assert 1 <= len(ann_ids) <= CFG.max_refs_per_image
        assert len(set(ann_ids)) == len(ann_ids)


def test_tfds_reader_accepts_layout(built: Path) -> None:
    from tfds_refcoco import refer
    layout = refer.LAYOUTS["shapesref"]
    d = refer.load_refer(built.parent, layout)
    n = sum(1 for _ in refer.iter_examples(built.parent, layout, d, "testB"))
    assert n == len(d.split_refs("testB")) > 0


def test_masks_decode_exactly(data: tuple[dict, list[dict]], examples, built: Path) -> None:
    inst, _ = data
    by_image: dict[int, list[dict]] = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    kinds = set()
    for image_id, (_, _, scene, _) in enumerate(examples, start=1):
        anns = sorted(by_image[image_id], key=lambda a: a["id"])
        assert len(anns) == len(scene.objects)
        im = next(i for i in inst["images"] if i["id"] == image_id)
        with Image.open(built / "images" / im["file_name"]) as pil:
            assert np.array_equal(np.asarray(pil), scene.image)
        covered = np.zeros((CFG.image_size,) * 2, bool)
        visible = []
        for obj in reversed(scene.objects):  # independent occlusion: later objects on top
            visible.append(obj.full_mask & ~covered)
            covered |= obj.full_mask
        visible.reverse()
        for a, obj, vis in zip(anns, scene.objects, visible, strict=True):
            m = _decode(a["segmentation"], CFG.image_size, CFG.image_size)
            assert np.array_equal(m, vis) and np.array_equal(m, obj.mask)
            assert a["area"] == m.sum()
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert a["category_id"] == sr.category_id(obj.shape)
            if isinstance(a["segmentation"], list):
                kinds.add("polygon")
                assert obj.shape not in sr.ROUND_SHAPES and not obj.occluded
            else:
                kinds.add("rle")
                assert obj.shape in sr.ROUND_SHAPES or obj.occluded
            assert obj.visible_fraction >= CFG.min_visible
    assert kinds == {"polygon", "rle"}


def test_painted_pixels_follow_masks() -> None:
    cfg = sr.ShapesRefConfig(pixel_noise=0.0, colour_jitter=0)
    scene = sr.generate_scene(np.random.default_rng(0), cfg, "attribute")
    for obj in scene.objects:
        rgb = np.asarray(sr.COLOUR_RGB[obj.colour], np.uint8)
        assert (scene.image[obj.mask] == rgb).all()


# ---------------------------------------------------------------------------------------------
# Splits and expression semantics (checked independently of the module's own semantics)
# ---------------------------------------------------------------------------------------------


def test_splits_and_kinds(data: tuple[dict, list[dict]], examples) -> None:
    _, refs = data
    assert {r["split"] for r in refs} == set(sr.SPLITS)
    flat = [ref for _, _, _, rs in examples for ref in rs]
    assert len(flat) == len(refs)
    for r, ref in zip(refs, flat, strict=True):
        assert r["kind"] == ref.kind and [s["sent"] for s in r["sentences"]] == ref.sentences
        for sent in ref.sentences:
            kind = sr.parse_expression(sent).kind
            if r["split"] == "testA":
                assert kind == "attribute"
            elif r["split"] == "testB":
                assert kind in ("position", "relation")
            assert kind == r["kind"]
    assert {r["kind"] for r in refs if r["split"] == "train"} == set(sr.KINDS)
    assert {r["kind"] for r in refs if r["split"] == "testB"} == {"position", "relation"}


def _attrs(obj: sr.SceneObject) -> dict[str, str]:
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size}


def _fits(obj: sr.SceneObject, desc: sr.Desc) -> bool:
    want = {k: v for k, v in dataclasses.asdict(desc).items() if v is not None}
    return all(_attrs(obj)[k] == v for k, v in want.items())


def test_expressions_unambiguous(examples) -> None:
    margin = CFG.position_margin * CFG.image_size
    seen = set()
    for _, _, scene, refs in examples:
        objs = scene.objects
        for ref in refs:
            t = objs[ref.target]
            assert t.visible_fraction >= CFG.min_visible_target
            for expr, sent in zip(ref.expressions, ref.sentences, strict=True):
                assert sr.parse_expression(sent) == expr
                assert sent in sr.phrasings(expr)
                cands = [i for i, o in enumerate(objs) if _fits(o, expr.desc)]
                assert ref.target in cands
                seen.add(expr.kind)
                if expr.kind == "attribute":
                    assert cands == [ref.target]  # the attribute combination is unique
                    assert expr.desc.shape == t.shape
                    assert sum(o.shape == t.shape for o in objs) >= 2  # shape alone: ambiguous
                elif expr.kind == "position":
                    assert len(cands) >= 2  # ambiguous without the position
                    tx, ty = t.center
                    for c in cands:
                        if c == ref.target:
                            continue
                        cx, cy = objs[c].center
                        for d in expr.position.split():
                            gap = {"left": cx - tx, "right": tx - cx, "top": cy - ty}.get(
                                d, ty - cy
                            )
                            assert gap >= margin, (sent, d)  # the target is the extreme one
                else:
                    lms = [i for i, o in enumerate(objs) if _fits(o, expr.landmark)]
                    assert len(lms) == 1 and lms[0] != ref.target  # unique landmark
                    lm = objs[lms[0]]
                    others = [c for c in cands if c not in (ref.target, lms[0])]
                    assert others  # ambiguous without the relation

                    def along_perp(o: sr.SceneObject, rel: str, lm=lm) -> tuple[float, float]:
                        dx, dy = lm.center[0] - o.center[0], lm.center[1] - o.center[1]
                        if rel in ("left of", "right of"):
                            return (dx if rel == "left of" else -dx), abs(dy)
                        return (dy if rel == "above" else -dy), abs(dx)

                    a, p = along_perp(t, expr.relation)
                    assert a >= margin and p <= a, sent
                    for c in others:  # no other candidate is even loosely in the relation
                        a, p = along_perp(objs[c], expr.relation)
                        assert not (a > 0 and p <= 2 * a), sent
    assert seen == set(sr.KINDS)


def test_phrasings_round_trip() -> None:
    exprs = [
        sr.Expression(sr.Desc("triangle", "green", "small")),
        sr.Expression(sr.Desc("circle", None, "large")),
        sr.Expression(sr.Desc("square", "red"), position="top right"),
        sr.Expression(sr.Desc(None, "red"), position="left"),
        sr.Expression(sr.Desc("star"), position="bottom"),
        sr.Expression(
            sr.Desc("square", "red"), relation="below", landmark=sr.Desc("circle", "blue")
        ),
        sr.Expression(
            sr.Desc("triangle"), relation="left of", landmark=sr.Desc("circle", "yellow")
        ),
    ]
    for e in exprs:
        forms = sr.phrasings(e)
        assert len(forms) >= 2 and len(set(forms)) == len(forms)
        for f in forms:
            assert sr.parse_expression(f) == e, f
    assert "the leftmost red shape" in sr.phrasings(exprs[3])
    assert "the red square below the blue circle" in sr.phrasings(exprs[5])
    with pytest.raises(ValueError):
        sr.parse_expression("the dog on the left")


def test_describe_and_generate_scene() -> None:
    rng = np.random.default_rng(1)
    cfg = sr.ShapesRefConfig(image_size=96)
    for kind in sr.KINDS:
        scene = sr.generate_scene(rng, cfg, kind)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
        sents = sr.describe(scene, scene.targets[0], rng, kind)
        assert 2 <= len(sents) <= 3
        assert all(sr.parse_expression(s).kind == kind for s in sents)
    with pytest.raises(ValueError):
        sr.ShapesRefConfig(colours=("red", "mauve"))
    with pytest.raises(ValueError):
        sr.generate_scene(rng, cfg, "colour")


# ---------------------------------------------------------------------------------------------
# Image-text matching
# ---------------------------------------------------------------------------------------------


def _clearly_false(scene: sr.Scene, e: sr.Expression) -> bool:
    """Independent check that an expression is false of the whole image."""
    objs = scene.objects
    cands = [o for o in objs if _fits(o, e.desc)]
    if not cands:
        return True
    if e.position is not None:
        if len(cands) != 1:
            return False
        x, y = cands[0].center
        s = scene.config.image_size
        dist = {"left": x, "right": s - x, "top": y, "bottom": s - y}
        return any(dist[d] / s >= 0.55 for d in e.position.split())
    if e.relation is not None:
        lms = [o for o in objs if _fits(o, e.landmark)]
        for c in cands:
            for lm in lms:
                if c is lm:
                    continue
                dx, dy = lm.center[0] - c.center[0], lm.center[1] - c.center[1]
                a, p = {
                    "left of": (dx, abs(dy)),
                    "right of": (-dx, abs(dy)),
                    "above": (dy, abs(dx)),
                    "below": (-dy, abs(dx)),
                }[e.relation]
                if a > 0 and p <= 2 * a:
                    return False
        return True
    return False


def test_hard_negatives_are_false() -> None:
    rng = np.random.default_rng(3)
    groups = set()
    for i in range(24):
        scene = sr.generate_scene(rng, CFG, sr.KINDS[i % 3])
        ref = sr.make_ref(scene, scene.targets[0], rng)
        pos, neg = sr.matching_expressions(ref, rng, max_negatives=8)
        assert neg and set(ref.expressions) <= set(pos)
        for e in pos:
            assert sr.refers_uniquely(scene, e, ref.target)
        for e in neg:
            assert _clearly_false(scene, e), e
            assert sr.expression_truth(scene, e) is False
            d, rd = e.desc, ref.expressions[0].desc
            if e.relation is not None and e.relation != ref.expressions[0].relation:
                groups.add("relation")
            elif e.position is not None and d == rd:
                groups.add("position")
            elif d.colour != rd.colour:
                groups.add("colour")
        pos_t, neg_t = sr.matching_pairs(ref, rng)
        assert set(ref.sentences) <= set(pos_t) and not set(pos_t) & set(neg_t)
        for text in neg_t:
            assert _clearly_false(scene, sr.parse_expression(text)), text
        for text in pos_t:
            assert sr.refers_uniquely(scene, sr.parse_expression(text), ref.target), text
    assert groups == {"relation", "position", "colour"}


def test_sample_training_example() -> None:
    rng = np.random.default_rng(5)
    labels = []
    for _ in range(40):
        image, text, label = sr.sample_training_example(rng, CFG)
        assert image.shape == (80, 80, 3) and image.dtype == np.uint8 and label in (0, 1)
        assert isinstance(text, str) and text == text.lower()
        sr.parse_expression(text)
        labels.append(label)
    assert 10 <= sum(labels) <= 30


# ---------------------------------------------------------------------------------------------
# Version 2 layout
# ---------------------------------------------------------------------------------------------


def test_v2_grid_layout_one_object_per_patch_cell() -> None:
    cfg = sr.ShapesRefConfig()
    assert (cfg.image_size, cfg.grid, sr.FORMAT_VERSION) == (80, 5, 2)
    cell = cfg.image_size // cfg.grid
    rng = np.random.default_rng(3)
    seen_shapes = set()
    for i in range(30):
        scene = sr.generate_scene(rng, cfg, sr.KINDS[i % 3])
        cells = set()
        for obj in scene.objects:
            seen_shapes.add(obj.shape)
            assert not obj.occluded and obj.area > 0
            ys, xs = np.nonzero(obj.mask)
            r, c = int(ys.mean()) // cell, int(xs.mean()) // cell
            # inside its cell up to one pixel (largest radius + jitter = 0.55 cell)
            assert r * cell - 1 <= ys.min() and ys.max() <= (r + 1) * cell
            assert c * cell - 1 <= xs.min() and xs.max() <= (c + 1) * cell
            assert (r, c) not in cells
            m = cfg.grid_margin  # the outer ring of cells stays empty
            assert m <= r < cfg.grid - m and m <= c < cfg.grid - m
            cells.add((r, c))
        assert scene.background in cfg.backgrounds
    assert seen_shapes == set(cfg.shapes) == {"circle", "square", "triangle", "cross"}


def test_v1_free_layout_still_available() -> None:
    cfg = sr.ShapesRefConfig(image_size=64, grid=0, shapes=sr.SHAPE_NAMES[:5],
                             backgrounds=("gradient", "stripes", "noise"),
                             background_contrast=None)
    scene = sr.generate_scene(np.random.default_rng(0), cfg, "relation")
    assert scene.image.shape == (64, 64, 3) and len(scene.objects) >= 3
    with pytest.raises(ValueError):
        sr.ShapesRefConfig(grid=2, grid_margin=0)  # 4 cells < max_objects
    with pytest.raises(ValueError):
        sr.ShapesRefConfig(grid=4)  # 2x2 inner cells < max_objects
    with pytest.raises(ValueError):
        sr.ShapesRefConfig(backgrounds=("plaid",))
