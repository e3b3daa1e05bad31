"""The refer-layout reader and the ``ref_coco_masks`` TFDS builder, against a tiny fixture."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tests.refer_fixture import (
    GRAY_IMAGE_ID,
    as_text,
    prepare_config,
    pycoco_mask,
    write_refer_fixture,
)
from tfds_refcoco import (
    LAYOUTS,
    RefCocoMasks,
    ReferFormatError,
    canonical_config_name,
    load_refer,
    load_split,
)
from tfds_refcoco.refer import iter_examples, load_refs

SPLITS = ["train", "val", "testA", "testB"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    expected = write_refer_fixture(root / "manual")
    data_dir = root / "tfds"
    builder = prepare_config("refcoco_unc", root / "manual", data_dir)
    return expected, builder, data_dir


def _check_example(ex: dict, ref: dict, expected: dict) -> None:
    img = expected["images"][ref["image_id"]]
    assert int(ex["image_id"]) == ref["image_id"]
    assert int(ex["ref_id"]) == ref["ref_id"]
    assert int(ex["ann_id"]) == ref["ann_id"]
    assert int(ex["category_id"]) == ref["category_id"]
    assert as_text(ex["file_name"]) == img["file_name"]
    assert [as_text(s) for s in ex["sentences"]] == ref["sentences_text"]
    np.testing.assert_array_equal(ex["sent_ids"], [s["sent_id"] for s in ref["sentences"]])
    assert ex["box"].dtype == np.float32
    np.testing.assert_array_equal(ex["box"], ref["box"])
    # Image: decoded pixels equal a PIL decode of the file on disk (grayscale -> 3 channels).
    with Image.open(img["path"]) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert ex["image"].shape == (img["height"], img["width"], 3)
    np.testing.assert_array_equal(ex["image"], pixels)
    # Mask: pixel-exact against pycocotools on the fixture's segmentation.
    ann = expected["anns"][ref["ann_id"]]
    gt = pycoco_mask(ann["segmentation"], img["height"], img["width"])
    assert ex["mask"].dtype == np.uint8 and ex["mask"].shape == gt.shape
    np.testing.assert_array_equal(ex["mask"], gt)
    assert ex["mask"].sum() > 0
    # Proposals: every instance of the image, ordered by ann_id.
    ids = expected["anns_by_image"][ref["image_id"]]
    np.testing.assert_array_equal(ex["proposal_ann_ids"], ids)
    assert ex["proposals"].shape == (len(ids), img["height"], img["width"])
    for k, a in enumerate(ids):
        seg = expected["anns"][a]["segmentation"]
        np.testing.assert_array_equal(ex["proposals"][k], pycoco_mask(seg, *gt.shape))
    np.testing.assert_array_equal(
        ex["proposal_category_ids"], [expected["anns"][a]["category_id"] for a in ids]
    )


def test_canonical_config_name():
    assert canonical_config_name("refcoco+_unc") == "refcoco_plus_unc"
    assert canonical_config_name("refcocog_google") == "refcocog_google"
    assert {c.name for c in RefCocoMasks.BUILDER_CONFIGS} == {*LAYOUTS, "phrasecut"}
    assert LAYOUTS["shapesref"].image_dir == "shapesref/images"
    with pytest.raises(ValueError, match="unknown"):
        canonical_config_name("refclef")


def test_plain_reader_matches_fixture(tmp_path):
    expected = write_refer_fixture(tmp_path)
    layout = LAYOUTS["refcoco_unc"]
    data = load_refer(tmp_path, layout)
    assert data.splits() == SPLITS
    for split in SPLITS:
        got = [ex for _, ex in iter_examples(tmp_path, layout, data, split)]
        assert [e["ref_id"] for e in got] == [r["ref_id"] for r in expected["splits"][split]]
        for e, r in zip(got, expected["splits"][split], strict=True):
            np.testing.assert_array_equal(e["mask"], r["mask"])
            assert e["sentences"] == r["sentences_text"]


def test_builder_splits_and_every_field(built):
    expected, builder, _ = built
    assert set(builder.info.splits) == set(SPLITS)
    for split in SPLITS:
        refs = expected["splits"][split]
        ds = builder.as_data_source(split=split)
        assert len(ds) == len(refs) == builder.info.splits[split].num_examples
        examples = [ds[i] for i in range(len(ds))]
        for ex, ref in zip(examples, refs, strict=True):
            _check_example(ex, ref, expected)
        # ordered by (image_id, ref_id): one image's refs are consecutive
        keys = [(int(e["image_id"]), int(e["ref_id"])) for e in examples]
        assert keys == sorted(keys)


def test_grayscale_image_decodes_to_rgb(built):
    expected, builder, _ = built
    ex = builder.as_data_source(split="testB")[0]
    assert int(ex["image_id"]) == GRAY_IMAGE_ID
    assert ex["image"].shape[-1] == 3
    np.testing.assert_array_equal(ex["image"][..., 0], ex["image"][..., 2])


def test_load_split_reuses_build_and_tfds_data_source(built):
    expected, _, data_dir = built
    ds = load_split("refcoco_unc", "val", manual_dir=expected["root"], data_dir=data_dir)
    assert [int(ds[i]["ref_id"]) for i in range(len(ds))] == [4, 5, 3]
    ds2 = tfds.data_source("ref_coco_masks/refcoco_unc", split="testA", data_dir=data_dir)
    assert len(ds2) == 1 and int(ds2[0]["ann_id"]) == 302


def test_alias_config_and_shapesref_layout(tmp_path):
    exp_plus = write_refer_fixture(tmp_path / "manual", dataset="refcoco+", seed=1)
    ds = load_split("refcoco+_unc", "testB", tmp_path / "manual", tmp_path / "tfds")
    assert (tmp_path / "tfds" / "ref_coco_masks" / "refcoco_plus_unc").is_dir()
    _check_example(ds[1], exp_plus["splits"]["testB"][1], exp_plus)
    exp_sr = write_refer_fixture(
        tmp_path / "manual", dataset="shapesref", image_dir="shapesref/images", seed=2
    )
    ds = load_split("shapesref", "train", tmp_path / "manual", tmp_path / "tfds")
    assert len(ds) == 2
    _check_example(ds[0], exp_sr["splits"]["train"][0], exp_sr)


def test_python2_pickle_with_bytes_strings(tmp_path):
    # A python-2 pickle: str objects stored as byte strings, one non-ASCII (UTF-8) sentence.
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    sent = b"}(" + s(b"sent") + s(b"caf\xc3\xa9") + s(b"sent_id") + b"K\x07u"
    ref = (
        b"}("
        + s(b"ref_id")
        + b"K\x01"
        + s(b"ann_id")
        + b"K\x02"
        + s(b"image_id")
        + b"K\x03"
        + s(b"split")
        + s(b"val")
        + s(b"sentences")
        + b"]"
        + sent
        + b"a"
        + b"u"
    )
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]" + ref + b"a.")
    refs = load_refs(path)
    assert refs == [
        {
            "ref_id": 1,
            "ann_id": 2,
            "image_id": 3,
            "split": "val",
            "sentences": [{"sent": "café", "sent_id": 7}],
        }
    ]


# ---- errors name the offending file -------------------------------------------------------


def _build(manual: Path, data_dir: Path) -> None:
    load_split("refcoco_unc", "val", manual, data_dir)


def test_missing_refs_file(tmp_path):
    write_refer_fixture(tmp_path / "m")
    (tmp_path / "m" / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(ReferFormatError, match=r"refs\(unc\)\.p"):
        _build(tmp_path / "m", tmp_path / "d")


def test_missing_instances_file(tmp_path):
    write_refer_fixture(tmp_path / "m")
    (tmp_path / "m" / "refcoco" / "instances.json").unlink()
    with pytest.raises(ReferFormatError, match="instances.json"):
        _build(tmp_path / "m", tmp_path / "d")


def test_malformed_json(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    exp["instances_path"].write_text('{"images": [')
    with pytest.raises(ReferFormatError, match="malformed JSON.*instances.json"):
        _build(tmp_path / "m", tmp_path / "d")


def test_unknown_ann_id(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    refs = pickle.loads(exp["refs_path"].read_bytes())
    refs[0]["ann_id"] = 999
    exp["refs_path"].write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(ReferFormatError, match=r"refs\(unc\)\.p.*ann_id 999"):
        _build(tmp_path / "m", tmp_path / "d")


def test_unknown_image_id(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    inst = json.loads(exp["instances_path"].read_text())
    inst["images"] = [im for im in inst["images"] if im["id"] != 25]
    exp["instances_path"].write_text(json.dumps(inst))
    with pytest.raises(ReferFormatError, match="instances.json.*image_id 25"):
        _build(tmp_path / "m", tmp_path / "d")


def test_missing_image_file(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    path = exp["images"][25]["path"]
    path.unlink()
    with pytest.raises(ReferFormatError, match=path.name):
        _build(tmp_path / "m", tmp_path / "d")


def test_unreadable_image_file(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    path = exp["images"][30]["path"]
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(ReferFormatError, match=path.name):
        _build(tmp_path / "m", tmp_path / "d")


def test_image_size_mismatch(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    path = exp["images"][25]["path"]
    Image.new("RGB", (10, 10)).save(path, format="JPEG")
    with pytest.raises(ReferFormatError, match=path.name):
        _build(tmp_path / "m", tmp_path / "d")


def test_failed_build_leaves_no_dataset(tmp_path):
    exp = write_refer_fixture(tmp_path / "m")
    shutil.rmtree(exp["image_root"])
    with pytest.raises(ReferFormatError):
        _build(tmp_path / "m", tmp_path / "d")
    assert not (tmp_path / "d" / "ref_coco_masks" / "refcoco_unc" / "1.0.0").exists()
