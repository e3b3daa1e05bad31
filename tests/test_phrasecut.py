"""PhraseCut: the official-layout reader, the ``ref_coco_masks/phrasecut`` TFDS config, the
official rasterisation (pixel for pixel), the official metrics and subsets, bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from iterprime_jax.metrics import (
    COCO_CLASSES,
    PHRASECUT_SUBSETS,
    is_coco_category,
    phrasecut_subsets,
    summarize,
    summarize_subsets,
)
from tests.phrasecut_fixture import (
    COCO_NAMES,
    official_mask,
    rewrite_tasks,
    write_phrasecut_fixture,
)
from tests.refer_fixture import as_text, prepare_config
from tfds_refcoco import load_split
from tfds_refcoco.phrasecut import (
    PhraseCutFormatError,
    iter_examples,
    load_phrasecut,
    polygons_to_mask,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SPLITS = ["train", "val", "test", "miniv"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("phrasecut")
    expected = write_phrasecut_fixture(root / "manual")
    data_dir = root / "tfds"
    builder = prepare_config("phrasecut", root / "manual", data_dir)
    return expected, builder, data_dir


# --------------------------------------------------------------------------- rasterisation
def test_rasterisation_equals_official_rule_on_hard_polygons():
    rng = np.random.default_rng(5)
    for _ in range(200):
        h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
        polys = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(1, 8))  # 1 point: skipped; 2: a line; self-intersecting too
            polys.append([[float(rng.uniform(-5, w + 5)), float(rng.uniform(-5, h + 5))]
                          for _ in range(n)])
        np.testing.assert_array_equal(polygons_to_mask(polys, h, w), official_mask(polys, h, w))


def test_rasterisation_truncates_like_int():
    # int() truncates toward zero: -0.9 -> 0, 2.99 -> 2 (not floor, not round).
    m = polygons_to_mask([[[-0.9, -0.9], [2.99, -0.9], [2.99, 2.99], [-0.9, 2.99]]], 6, 6)
    expected = np.zeros((6, 6), np.uint8)
    expected[0:3, 0:3] = 1
    np.testing.assert_array_equal(m, expected)
    # A 2-point polygon is drawn (as its outline, a line); a 1-point one is skipped.
    line = polygons_to_mask([[[0, 1], [4, 1]]], 3, 5)
    assert line[1].tolist() == [1, 1, 1, 1, 1] and line.sum() == 5
    assert polygons_to_mask([[[2, 2]]], 4, 4).sum() == 0


def _pixels(*rows: str) -> np.ndarray:
    """A mask written out by hand, one string per row ('#' = 1)."""
    return np.array([[c == "#" for c in r] for r in rows], np.uint8)


def test_rasterisation_against_masks_written_by_hand():
    """Small polygons whose official masks are known without PIL: the boundary is part of the
    mask (outline=1), also along a 45-degree edge; polygons that touch or overlap give their
    union, the shared pixels once."""
    triangle = [[0, 0], [4, 0], [0, 4]]  # every (x, y) with x + y <= 4, hypotenuse included
    np.testing.assert_array_equal(polygons_to_mask([triangle], 5, 6), _pixels(
        "#####.",
        "####..",
        "###...",
        "##....",
        "#.....",
    ))
    touching = [[[0, 0], [2, 0], [2, 2], [0, 2]], [[2, 1], [5, 1], [5, 3], [2, 3]]]
    np.testing.assert_array_equal(polygons_to_mask(touching, 4, 6), _pixels(
        "###...",
        "######",
        "######",
        "..####",
    ))
    # an L (concave) and, as a second polygon, a single point (skipped)
    ell = [[1, 0], [2, 0], [2, 3], [4, 3], [4, 4], [1, 4]]
    np.testing.assert_array_equal(polygons_to_mask([ell, [[5, 0]]], 5, 6), _pixels(
        ".##...",
        ".##...",
        ".##...",
        ".####.",
        ".####.",
    ))
    # overlapping squares: union, no pixel counted twice (values stay 0/1)
    overlap = [[[0, 0], [2, 0], [2, 2], [0, 2]], [[1, 1], [3, 1], [3, 3], [1, 3]]]
    np.testing.assert_array_equal(polygons_to_mask(overlap, 4, 4), _pixels(
        "###.",
        "####",
        "####",
        ".###",
    ))


# --------------------------------------------------------------------------- reader + builder
def test_plain_reader_order_and_masks(tmp_path):
    expected = write_phrasecut_fixture(tmp_path)
    data = load_phrasecut(tmp_path)
    assert data.splits() == SPLITS
    for split in SPLITS:
        got = [ex for _, ex in iter_examples(data, split)]
        want = expected["splits"][split]
        assert [e["task_id"] for e in got] == [t["task_id"] for t in want]
        for e, t in zip(got, want, strict=True):
            np.testing.assert_array_equal(e["mask"], t["mask"])
    # The fixture exercises what it claims to.
    val = expected["splits"]["val"]
    assert any(len(t["Polygons"]) >= 5 for t in val)
    assert any(len(inst) >= 3 for t in val for inst in t["Polygons"])
    assert any(p[0] != int(p[0]) for t in val for inst in t["Polygons"] for poly in inst
               for p in poly)


def test_builder_every_field_and_pixel_exact_gt(built):
    expected, builder, _ = built
    assert set(builder.info.splits) == set(SPLITS)
    for split in SPLITS:
        tasks = expected["splits"][split]
        ds = builder.as_data_source(split=split)
        assert len(ds) == len(tasks) == builder.info.splits[split].num_examples
        prev_image = None
        seen_images = set()
        for k, task in enumerate(tasks):
            ex = ds[k]
            img = expected["images"][task["image_id"]]
            assert as_text(ex["task_id"]) == task["task_id"]
            assert int(ex["task_index"]) == k
            assert int(ex["image_id"]) == task["image_id"]
            assert as_text(ex["file_name"]) == f"{task['image_id']}.jpg"
            assert as_text(ex["phrase"]) == task["phrase"]
            ps = task["phrase_structure"]
            assert as_text(ex["name"]) == ps["name"]
            assert [as_text(a) for a in ex["attributes"]] == ps["attributes"]
            assert [as_text(a) for a in ex["relation_predicates"]] == [
                r[0] for r in ps["relation_descriptions"]]
            assert [as_text(a) for a in ex["relation_objects"]] == [
                r[1] for r in ps["relation_descriptions"]]
            np.testing.assert_array_equal(ex["relation_ids"], ps["relation_ids"])
            assert as_text(ex["phrase_type"]) == ps["type"]
            np.testing.assert_array_equal(ex["ann_ids"], task["ann_ids"])
            np.testing.assert_allclose(ex["instance_boxes"],
                                       np.asarray(task["instance_boxes"], np.float32))
            # GT: pixel for pixel the official rule, at the image's size.
            gt = official_mask([p for inst in task["Polygons"] for p in inst],
                               img["height"], img["width"])
            assert ex["mask"].dtype == np.uint8 and ex["mask"].shape == gt.shape
            np.testing.assert_array_equal(ex["mask"], gt)
            assert int(ex["mask_area"]) == int(gt.sum()) > 0
            with Image.open(img["path"]) as im:
                np.testing.assert_array_equal(ex["image"], np.asarray(im.convert("RGB")))
            # one image's tasks are consecutive
            if task["image_id"] != prev_image:
                assert task["image_id"] not in seen_images
                seen_images.add(task["image_id"])
                prev_image = task["image_id"]


def test_tfds_data_source_and_load_split(built):
    expected, _, data_dir = built
    ds = tfds.data_source("ref_coco_masks/phrasecut", split="miniv", data_dir=data_dir)
    assert [as_text(ds[i]["task_id"]) for i in range(len(ds))] == [
        t["task_id"] for t in expected["splits"]["miniv"]]
    ds2 = load_split("phrasecut", "test", manual_dir=expected["root"], data_dir=data_dir)
    assert len(ds2) == len(expected["splits"]["test"])


def test_dataset_dir_may_be_manual_dir_itself(tmp_path):
    expected = write_phrasecut_fixture(tmp_path / "m")
    data = load_phrasecut(expected["dataset_dir"])
    assert data.root == expected["dataset_dir"]
    for s in ("train", "val", "test"):
        (expected["dataset_dir"] / f"refer_{s}.json").unlink()
    assert load_phrasecut(tmp_path / "m").splits() == ["miniv"]  # only the files present


# --------------------------------------------------------------------------- bad files
def _build(manual, data_dir):
    load_split("phrasecut", "val", manual, data_dir)


def test_missing_polygons_names_the_task(tmp_path):
    exp = write_phrasecut_fixture(tmp_path / "m")
    tid = exp["splits"]["val"][2]["task_id"]
    rewrite_tasks(exp["dataset_dir"], "val",
                  lambda ts: [t.pop("Polygons") for t in ts if t["task_id"] == tid])
    with pytest.raises(PhraseCutFormatError, match=rf"refer_val\.json: task '{tid}' lacks "
                                                   r"\['Polygons'\]"):
        _build(tmp_path / "m", tmp_path / "d")
    assert not (tmp_path / "d" / "ref_coco_masks" / "phrasecut" / "1.0.0").exists()


def test_absent_image_names_the_task(tmp_path):
    exp = write_phrasecut_fixture(tmp_path / "m")
    task = exp["splits"]["val"][0]
    (exp["dataset_dir"] / "images" / f"{task['image_id']}.jpg").unlink()
    with pytest.raises(PhraseCutFormatError,
                       match=rf"task '{task['task_id']}'.*{task['image_id']}\.jpg"):
        _build(tmp_path / "m", tmp_path / "d")


def test_image_in_two_splits_is_an_error(tmp_path):
    exp = write_phrasecut_fixture(tmp_path / "m")
    moved = exp["splits"]["val"][0]

    def add(ts):
        ts.append({k: v for k, v in moved.items() if k != "mask"} | {"task_id": "11__777"})

    rewrite_tasks(exp["dataset_dir"], "test", add)
    with pytest.raises(PhraseCutFormatError,
                       match=r"image 11 is in two splits: task '11__\d+(_\d+)*' in "
                             r"refer_val\.json and task '11__777' in refer_test\.json"):
        load_phrasecut(tmp_path / "m")


def test_other_malformed_files(tmp_path):
    exp = write_phrasecut_fixture(tmp_path / "m")
    ddir = exp["dataset_dir"]
    first = exp["splits"]["val"][0]["task_id"]
    backup = (ddir / "refer_val.json").read_text()

    def expect(edit, pattern):
        rewrite_tasks(ddir, "val", edit)
        with pytest.raises(PhraseCutFormatError, match=pattern):
            load_phrasecut(tmp_path / "m")
        (ddir / "refer_val.json").write_text(backup)

    def set_field(key, value):
        return lambda ts: [t.__setitem__(key, value) for t in ts if t["task_id"] == first]

    expect(set_field("Polygons", [[[[1, 2, 3]]]]), rf"task '{first}': a polygon must be")
    expect(set_field("Polygons", []), rf"task '{first}': Polygons must be a list with one")
    expect(set_field("image_id", 12345), rf"task '{first}' refers to image_id 12345")
    expect(set_field("image_id", 21), rf"task '{first}' is on image 21, which .*'test'")
    expect(set_field("phrase", " "), rf"task '{first}' has an empty phrase")
    dup = json.loads(backup)[0]["task_id"]
    expect(lambda ts: ts.append(dict(ts[0])), rf"refer_val\.json: task_id '{dup}' appears twice")
    (ddir / "refer_val.json").write_text("[{")
    with pytest.raises(PhraseCutFormatError, match=r"malformed JSON in .*refer_val\.json"):
        load_phrasecut(tmp_path / "m")
    (ddir / "refer_val.json").write_text(backup)
    (ddir / "image_data_split.json").unlink()
    with pytest.raises(PhraseCutFormatError, match="image_data_split.json"):
        load_phrasecut(tmp_path / "m")
    shutil.rmtree(ddir)
    with pytest.raises(PhraseCutFormatError, match="no PhraseCut refer file"):
        load_phrasecut(tmp_path / "m")


# --------------------------------------------------------------------------- metrics
def _official_by_hand(inter, union):
    """The official evaluator's numbers, computed directly (loops, no numpy tricks)."""
    ious = [0.0 if i == 0 else i / u for i, u in zip(inter, union, strict=True)]
    n = len(ious)
    out = {"mIoU": sum(ious) / n, "oIoU": sum(inter) / sum(union)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"prec@{t:g}"] = sum(1 for x in ious if x > t) / n
    return out


def test_phrasecut_convention_matches_hand_computation():
    inter = [0, 30, 60, 70, 80, 90, 5, 0, 45]
    union = [10, 50, 100, 100, 100, 100, 5, 0, 50]  # IoUs exactly at 0.6, 0.7, 0.8, 0.9, 1
    got = summarize(inter, union, convention="phrasecut")
    want = _official_by_hand(inter, union)  # the empty union (I == 0) scores 0
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    assert got["n"] == 9
    # strict ">": a sample at exactly IoU 0.7 is not counted at 0.7
    assert got["prec@0.7"] == pytest.approx(4 / 9)
    assert summarize(inter, union, convention="standard")["prec@0.7"] == pytest.approx(5 / 9)


def test_subset_rules():
    assert len(COCO_CLASSES) == 80
    for name, coco in COCO_NAMES.items():
        assert is_coco_category(name) == coco
    assert phrasecut_subsets("dog", 1, 19, 1000) == ("all", "c_coco", "i_single", "s_small")
    assert phrasecut_subsets("sky", 2, 20, 1000) == ("all", "c_notcoco", "i_multi", "s_mid")
    assert phrasecut_subsets("sky", 4, 200, 1000) == ("all", "c_notcoco", "i_multi", "s_mid")
    assert phrasecut_subsets("car", 5, 201, 1000) == ("all", "c_coco", "i_many", "s_large")
    assert phrasecut_subsets("Dog", 0, 0, 10) == ("all", "c_notcoco", "s_small")


def test_summarize_subsets_equals_per_subset_hand_computation():
    rng = np.random.default_rng(0)
    n = 40
    union = rng.integers(1, 200, n)
    inter = (union * rng.uniform(0, 1, n)).astype(np.int64)
    inter[::7] = 0
    names = rng.choice(["dog", "sky", "car", "tree"], n)
    inst = rng.integers(1, 8, n)
    area = rng.integers(0, 400, n)
    subsets = [phrasecut_subsets(str(a), int(b), int(c), 1000)
               for a, b, c in zip(names, inst, area, strict=True)]
    got = summarize_subsets(inter, union, subsets)
    assert list(got) == [s for s in PHRASECUT_SUBSETS if any(s in x for x in subsets)]
    assert set(got) == set(PHRASECUT_SUBSETS)  # the random draw covers every subset
    for s, m in got.items():
        keep = [k for k in range(n) if s in subsets[k]]
        want = _official_by_hand([int(inter[k]) for k in keep], [int(union[k]) for k in keep])
        assert m["n"] == len(keep)
        for k, v in want.items():
            assert m[k] == pytest.approx(v, abs=1e-12), (s, k)
