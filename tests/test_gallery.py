"""Re-running evaluated samples gives the evaluation's own I and U (heat-map mode at the COCO
canvas, proposals-file and on-the-fly Mask2Former modes, refer-format fixture); bad inputs name
themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import iterprime_jax as ij
from iterprime_jax.evaluation import EvalConfig, EvalError, evaluate, gallery, prepare_split
from tests.conftest import write_tiny_model
from tests.float32 import MAP_TOL, upsampled_map_tol
from tests.notebook_fixtures import tiny_proposer
from tests.refer_fixture import write_refer_fixture


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("gallery")
    fx = write_refer_fixture(root / "manual")
    model = ij.load(write_tiny_model(root / "model"))
    # proposals file of the val split: every annotation of the image, then the same masks
    # shifted by 3 px
    val_images = {r["image_id"] for r in fx["splits"]["val"]}
    items = []
    for ann in (a for a in fx["anns"].values() if a["image_id"] in val_images):
        for shift in (0, 3):
            m = np.roll(ann["mask"], shift, axis=1)
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            items.append({"image_id": ann["image_id"], "segmentation": {
                "size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}})
    props = root / "proposals.json"
    props.write_text(json.dumps(items))
    base = EvalConfig(dataset="refcoco_unc", split="val", manual_dir=str(root / "manual"),
                      data_dir=str(root / "tfds"), weights=str(model.path))
    prepare_split(base)
    return {"root": root, "model": model, "base": base, "props": props}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["heatmap", "file", "mask2former"])
def test_rerun_matches_evaluation(env: dict, kind: str) -> None:
    model, method = env["model"], ij.IteRPrimEConfig(layer=1)
    # heat-map mode at the COCO canvas (640; the re-run uses the image's own 64), file mode
    # at canvas 64 (faster)
    config = env["base"].replace(
        proposals={"heatmap": "heatmap", "file": str(env["props"])}.get(kind, kind),
        canvas=None if kind == "heatmap" else 64, out=str(env["root"] / f"out_{kind}"))
    if kind == "mask2former":  # a tiny random Mask2Former, run again by the re-run
        config = config.replace(proposer_weights=str(tiny_proposer(env["root"] / "m2f")),
                                propose=ij.ProposeConfig(short_edge=64, max_size=64))
    evaluate(config, method, model=model)
    records = gallery.read_run(config.out)
    assert len(records) >= 4
    views = gallery.rerun_samples(model, config, records, method)
    assert [v.record for v in views] == records
    assert all(v.matches_record for v in views), [(v.intersection, v.union, v.record["I"],
                                                   v.record["U"]) for v in views]
    assert any(v.intersection > 0 for v in views)  # not vacuous: some overlap is reproduced
    for v in views:
        assert v.image.shape[:2] == v.gt.shape == v.result.mask.shape
        assert v.gt.any()
        if kind == "heatmap":
            assert v.proposals is None and v.result.proposal_index == -1
        else:
            assert v.proposals.shape[1:] == v.gt.shape and v.proposals.shape[0] >= 2
            assert v.result.proposal_index == v.record["proposal"]  # file/query index
    if kind == "mask2former":
        assert all(v.proposals.shape[0] == 6 for v in views)
    worst = gallery.worst_samples(records, 2)
    again = gallery.rerun_samples(model, config, worst, method)
    assert [v.record for v in again] == worst and all(v.matches_record for v in again)


def test_bad_inputs(env: dict, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="samples.jsonl does not exist"):
        gallery.read_run(tmp_path)
    config = env["base"].replace(proposals="heatmap", out=str(env["root"] / "out_heatmap"))
    bogus = [{"image_id": 9, "ref_id": 12345, "sent_id": 1, "sentence": "x", "I": 0, "U": 1,
              "IoU": 0.0}]
    with pytest.raises(EvalError, match=r"ref_ids \[12345\] are not in the split"):
        gallery.rerun_samples(env["model"], config, bogus, ij.IteRPrimEConfig(layer=1))
    assert gallery.rerun_samples(env["model"], config, [], ij.IteRPrimEConfig(layer=1)) == []


@pytest.mark.slow
def test_rerun_phrasecut(tmp_path: Path) -> None:
    """PhraseCut rows (one phrase per task; the record's ref_id is the task index)."""
    from tests.phrasecut_fixture import write_phrasecut_fixture

    write_phrasecut_fixture(tmp_path / "manual")
    model, method = ij.load(write_tiny_model(tmp_path / "model")), ij.IteRPrimEConfig(layer=1)
    config = EvalConfig(dataset="phrasecut", split="val", manual_dir=str(tmp_path / "manual"),
                        data_dir=str(tmp_path / "tfds"), weights=str(model.path),
                        proposals="heatmap", out=str(tmp_path / "out"))
    evaluate(config, method, model=model)
    records = gallery.read_run(config.out)
    assert len(records) >= 2 and all("task_id" in r for r in records)
    views = gallery.rerun_samples(model, config, records, method)
    assert [v.record for v in views] == records
    # Heat-map mode thresholds the map at 0.5: a pixel whose heat lies within float32
    # reordering noise of it (tests/float32.py: MAP_TOL on the grid, at most 30x that after
    # upsampling) may flip between the evaluator's batch of 8 images and the re-run's batch of
    # 3. Those pixels are the only slack: a sample without any must match exactly.
    band = upsampled_map_tol(MAP_TOL)
    for v in views:
        r = v.record
        near = int((np.abs(v.result.heatmap - 0.5) <= band).sum())
        assert abs(v.intersection - r["I"]) <= near and abs(v.union - r["U"]) <= near, (r, near)
        assert v.matches_record or near > 0, r
    assert all(v.gt.any() and v.gt.sum() == v.record["gt_pixels"] for v in views)
