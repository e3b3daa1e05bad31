"""PhraseCut through the evaluation driver (run_eval.py --dataset phrasecut): rows with task_id,
I/U against the official ground truth, official metrics and subsets in metrics.json, resume,
--unseen, and the errors (gt proposals, unseen elsewhere, missing files)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import run_eval
from iterprime_jax import evaluation as ev
from iterprime_jax.metrics import COCO_CLASSES, phrasecut_subsets
from tests.conftest import write_tiny_model
from tests.phrasecut_fixture import write_phrasecut_fixture

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
TASK_FIELDS = {"image_id", "ref_id", "ann_id", "sent_id", "sentence", "I", "U", "IoU",
               "iterations", "primary_word", "proposal", "has_candidate", "task_id",
               "category", "instances", "gt_pixels", "image_pixels"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("phrasecut_eval")
    model = write_tiny_model(root / "model")
    fx = write_phrasecut_fixture(root / "manual")
    data_dir = root / "tfds"
    ev.prepare_split(ev.EvalConfig(dataset="phrasecut", split="val",
                                   manual_dir=str(root / "manual"), data_dir=str(data_dir)))
    # A proposals file of the val split: per image, the GT of its first task, a box and the
    # whole image (a candidate wherever the heat map peaks), as RLEs.
    props: dict[int, list[np.ndarray]] = {}
    items = []
    for split in ("val",):
        for t in fx["splits"][split]:
            if t["image_id"] in props:
                continue
            h, w = t["mask"].shape
            box = np.zeros((h, w), np.uint8)
            box[h // 4: h // 2, w // 3: w - 2] = 1
            props[t["image_id"]] = [t["mask"], box, np.ones((h, w), np.uint8)]
            for m in props[t["image_id"]]:
                rle = mask_utils.encode(np.asfortranarray(m))
                items.append({"image_id": t["image_id"], "score": 1.0,
                              "segmentation": {"size": [h, w],
                                               "counts": rle["counts"].decode("ascii")}})
    (root / "props.json").write_text(json.dumps(items))
    return {"root": root, "model": model, "data_dir": data_dir, "fx": fx, "props": props}


def args_of(env: dict, out: Path, *extra: str, split: str = "val") -> list[str]:
    return ["--dataset", "phrasecut", "--split", split,
            "--manual-dir", str(env["root"] / "manual"), "--data-dir", str(env["data_dir"]),
            "--weights", str(env["model"]), "--out", str(out), "--no-progress", *extra]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _hand_metrics(rows: list[dict]) -> dict:
    """The official evaluator's formulas, by hand: IoU 0 when I == 0, strict '>'."""
    ious = [0.0 if r["I"] == 0 else r["I"] / r["U"] for r in rows]
    out = {"mIoU": sum(ious) / len(ious),
           "oIoU": sum(r["I"] for r in rows) / sum(r["U"] for r in rows), "n": len(rows)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"prec@{t:g}"] = sum(x > t for x in ious) / len(ious)
    return out


def _assert_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


@pytest.fixture(scope="module")
def file_run(env: dict) -> Path:
    out = env["root"] / "file_run"
    assert run_eval.main(args_of(env, out, "--proposals", str(env["root"] / "props.json"))) == 0
    return out


def test_rows_iu_against_official_gt(env: dict, file_run: Path) -> None:
    tasks = env["fx"]["splits"]["val"]
    rows = read_lines(file_run / "samples.jsonl")
    assert [r["task_id"] for r in rows] == [t["task_id"] for t in tasks]  # one row per task
    assert all(set(r) == TASK_FIELDS for r in rows)
    for k, (r, t) in enumerate(zip(rows, tasks, strict=True)):
        gt = t["mask"].astype(bool)  # the official rasterisation (fixture's own transcription)
        assert (r["ref_id"], r["sent_id"], r["ann_id"]) == (k, 0, -1)
        assert r["sentence"] == t["phrase"] and r["image_id"] == t["image_id"]
        assert r["category"] == t["phrase_structure"]["name"]
        assert r["instances"] == len(t["instance_boxes"])
        assert r["gt_pixels"] == gt.sum() and r["image_pixels"] == gt.size
        if r["proposal"] == -1:
            pred = np.zeros_like(gt)
        else:
            pred = env["props"][t["image_id"]][r["proposal"]].astype(bool)
        assert (r["I"], r["U"]) == ((pred & gt).sum(), (pred | gt).sum())
    assert all(r["has_candidate"] and r["proposal"] >= 0 for r in rows)


def test_metrics_and_subsets_match_hand_computation(env: dict, file_run: Path) -> None:
    rows = read_lines(file_run / "samples.jsonl")
    rec = json.loads((file_run / "metrics.json").read_text())
    assert rec["convention"] == "phrasecut" and rec["unseen"] is False
    _assert_metrics(rec["metrics"]["val"], _hand_metrics(rows))
    # Subsets by hand from the fixture's tasks (not from the rows' own fields).
    want: dict[str, list[dict]] = {}
    for r, t in zip(rows, env["fx"]["splits"]["val"], strict=True):
        for s in phrasecut_subsets(t["phrase_structure"]["name"], len(t["Polygons"]),
                                   int(t["mask"].sum()), t["mask"].size):
            want.setdefault(s, []).append(r)
    assert list(rec["subsets"]) == [s for s in rec["subsets"] if s in want]
    assert set(rec["subsets"]) == set(want)
    assert {"c_coco", "c_notcoco", "i_single", "i_multi", "i_many", "s_mid",
            "s_large"} <= set(want)
    for s, subset_rows in want.items():
        _assert_metrics(rec["subsets"][s], _hand_metrics(subset_rows))
    _assert_metrics(rec["subsets"]["all"], _hand_metrics(rows))


def test_heatmap_unseen_and_printed_table(env: dict, capsys: pytest.CaptureFixture) -> None:
    out = env["root"] / "unseen"
    assert run_eval.main(args_of(env, out, "--proposals", "heatmap", "--unseen")) == 0
    printed = capsys.readouterr().out
    assert "PhraseCut subsets (unseen)" in printed and "c_notcoco" in printed
    rows = read_lines(out / "samples.jsonl")
    kept = [t for t in env["fx"]["splits"]["val"]
            if t["phrase_structure"]["name"] not in COCO_CLASSES]
    assert 0 < len(kept) < len(env["fx"]["splits"]["val"])
    assert [r["task_id"] for r in rows] == [t["task_id"] for t in kept]
    assert all(r["proposal"] == -1 for r in rows)
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["unseen"] is True and "c_coco" not in rec["subsets"]
    _assert_metrics(rec["metrics"]["val"], _hand_metrics(rows))
    # The same out dir refuses the run without --unseen (resume checks the run config).
    assert run_eval.main(args_of(env, out, "--proposals", "heatmap")) == 2


def test_resume_computes_only_missing_tasks(env: dict, file_run: Path) -> None:
    out = env["root"] / "resumed"
    out.mkdir()
    for name in ("samples.jsonl", "run_config.json"):
        (out / name).write_text((file_run / name).read_text())
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:3]) + lines[3][:20])  # cut mid-line
    res = ev.evaluate(ev.EvalConfig(dataset="phrasecut", split="val",
                                    manual_dir=str(env["root"] / "manual"),
                                    data_dir=str(env["data_dir"]), weights=str(env["model"]),
                                    proposals=str(env["root"] / "props.json"), out=str(out)))
    rows = [json.loads(x) for x in lines]
    kept = {r["task_id"] for r in rows[:3]}
    done = {r["image_id"] for r in rows
            if all(x["task_id"] in kept for x in rows if x["image_id"] == r["image_id"])}
    assert done  # at least one image was complete before the cut
    assert res.computed == sum(r["image_id"] not in done for r in rows) > 0
    assert (out / "samples.jsonl").read_text() == (file_run / "samples.jsonl").read_text()
    assert json.loads((out / "metrics.json").read_text()) == \
        json.loads((file_run / "metrics.json").read_text())
    assert res.subsets == json.loads((file_run / "metrics.json").read_text())["subsets"]


def test_two_devices_identical(env: dict, file_run: Path) -> None:
    out = env["root"] / "two_devices"
    envvars = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "run_eval.py"),
         *args_of(env, out, "--proposals", str(env["root"] / "props.json"), "--batch-size",
                  "2")],
        cwd=root, env=envvars, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 images per step over 2 local device(s)" in proc.stderr
    assert (out / "samples.jsonl").read_text() == (file_run / "samples.jsonl").read_text()
    assert json.loads((out / "metrics.json").read_text())["subsets"] == \
        json.loads((file_run / "metrics.json").read_text())["subsets"]


def test_ablation_with_proposals_file(env: dict, file_run: Path) -> None:
    out = env["root"] / "ablation"
    assert run_eval.main(args_of(env, out, "--proposals", str(env["root"] / "props.json"),
                                 "--ablation")) == 0
    rec = json.loads((out / "ablation.json").read_text())
    assert rec["convention"] == "phrasecut" and len(rec["rows"]) == 7
    n = len(env["fx"]["splits"]["val"])
    assert all(r["metrics"]["n"] == n for r in rec["rows"])
    full = json.loads((file_run / "metrics.json").read_text())["metrics"]["val"]
    last = rec["rows"][-1]["metrics"]  # "full" row = the main run (+ bootstrap intervals)
    assert {k: last[k] for k in full} == full
    assert last["mIoU_lo"] <= last["mIoU"] <= last["mIoU_hi"]


def test_other_split_and_limit(env: dict) -> None:
    out = env["root"] / "miniv"
    assert run_eval.main(args_of(env, out, "--proposals", "heatmap", "--limit", "1",
                                 split="miniv")) == 0
    rows = read_lines(out / "samples.jsonl")
    assert [r["task_id"] for r in rows] == [t["task_id"] for t in env["fx"]["splits"]["miniv"]]


def test_errors(env: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert run_eval.main(args_of(env, tmp_path / "a")) == 2  # default proposals: gt
    assert "PhraseCut has no per-image instance masks" in caplog.text
    assert not (tmp_path / "a" / "run_config.json").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_eval.main(["--dataset", "shapesref", "--unseen", "--weights",
                              str(env["model"]), "--out", str(tmp_path / "b"),
                              "--no-progress"]) == 2
    assert "unseen applies to PhraseCut only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_eval.main(["--dataset", "phrasecut", "--split", "val", "--manual-dir",
                              str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "tfds"),
                              "--weights", str(env["model"]), "--proposals", "heatmap",
                              "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "image_data_split.json" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_eval.main(args_of(env, tmp_path / "d", "--proposals", "heatmap",
                                     split="testA")) == 2
    assert "Unknown split 'testA'" in caplog.text and "miniv" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_eval.main(args_of(env, tmp_path / "e", "--proposals", "heatmap",
                                     "--ablation")) == 2
    assert "the ablation's proposal rows need proposals" in caplog.text


def test_mask2former_proposals(env: dict, tmp_path: Path) -> None:
    """PhraseCut with proposals computed on the fly by a tiny converted Mask2Former: the rows'
    I / U against the official GT and the proposals this test computes itself from the image
    files (the saved file must hold the same masks)."""
    from PIL import Image

    import iterprime_jax as ij
    from iterprime_jax.evaluation.proposals import decode_rles
    from iterprime_jax.models.conversion import convert_hf_checkpoint
    from tests.test_propose_e2e import tiny_hf_mask2former

    tiny_hf_mask2former().save_pretrained(str(tmp_path / "hf"))
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "m2f")
    out, saved = tmp_path / "out", tmp_path / "proposals.json"
    assert run_eval.main(args_of(
        env, out, "--proposals", "mask2former", "--proposer-weights", str(tmp_path / "m2f"),
        "--proposal-short-edge", "64", "--proposal-max-size", "64",
        "--save-proposals", str(saved))) == 0
    rows = read_lines(out / "samples.jsonl")
    tasks = env["fx"]["splits"]["val"]
    assert [r["task_id"] for r in rows] == [t["task_id"] for t in tasks]
    by_image = ev.load_proposals_file(saved)
    proposer = ij.load(tmp_path / "m2f")
    config = ij.ProposeConfig(short_edge=64, max_size=64)
    for r, t in zip(rows, tasks, strict=True):
        gt = t["mask"].astype(bool)
        with Image.open(env["fx"]["images"][r["image_id"]]["path"]) as im:
            image = np.asarray(im.convert("RGB"))
        props = ij.propose(proposer, image, config.threshold, config)
        np.testing.assert_array_equal(decode_rles(by_image[r["image_id"]], gt.shape), props)
        pred = props[r["proposal"]] if r["proposal"] >= 0 else np.zeros_like(gt)
        assert (r["I"], r["U"]) == ((pred & gt).sum(), (pred | gt).sum())
    assert any(r["has_candidate"] for r in rows)
    rec = json.loads((out / "metrics.json").read_text())
    _assert_metrics(rec["metrics"]["val"], _hand_metrics(rows))
