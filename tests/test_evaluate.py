"""The evaluation driver (iterprime_jax.evaluation, run_eval.py): files, metrics, sharding over
devices and processes, resume after SIGKILL, proposals files, the ablation, bad inputs.

One tiny random model and two small datasets (the refer fixture as ``refcoco_unc`` and a small
ShapesRef val split) are built once per module; the 1-device in-process run is the reference
every other run must reproduce sample for sample.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

import run_eval
from iterprime_jax import evaluation as ev
from iterprime_jax.cli_args import method_overrides
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.settings import resolve_method
from shapesref import (
    ShapesRefConfig,
    decode_segmentation,
    generate_example,
    write_shapesref,
)
from tests.conftest import write_tiny_model
from tests.refer_fixture import write_refer_fixture

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ShapesRefConfig(num_train=0, num_val=16, num_test_a=0, num_test_b=0, seed=3)
SAMPLE_FIELDS = {"image_id", "ref_id", "ann_id", "sent_id", "sentence", "I", "U", "IoU",
                 "iterations", "primary_word", "proposal", "has_candidate", "kind"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    model = write_tiny_model(root / "model")
    write_shapesref(root / "shapes_manual", SHAPES)
    refer = write_refer_fixture(root / "refer_manual")
    data_dir = root / "tfds"
    # Build both TFDS splits once, before any subprocess opens them.
    ev.prepare_split(ev.EvalConfig(dataset="shapesref", split="val",
                                   manual_dir=str(root / "shapes_manual"),
                                   data_dir=str(data_dir)))
    ev.prepare_split(ev.EvalConfig(dataset="refcoco_unc", split="val",
                                   manual_dir=str(root / "refer_manual"),
                                   data_dir=str(data_dir)))
    with open(root / "shapes_manual" / "shapesref" / "refs(unc).p", "rb") as f:
        refs = [r for r in pickle.load(f) if r["split"] == "val"]
    return {"root": root, "model": model, "data_dir": data_dir, "refer": refer,
            "shapes_refs": refs}


def shapes_args(env: dict, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "shapesref", "--split", "val",
            "--manual-dir", str(env["root"] / "shapes_manual"),
            "--data-dir", str(env["data_dir"]), "--weights", str(env["model"]),
            "--out", str(out), "--no-progress", *extra]


# `evaluate` on ShapesRef val (argv: manual dir, data dir, weights, out), sleeping 5 s after every
# batch (the progress callback runs once a batch's samples are written).
SLOW_EVAL = """
import sys, time
from iterprime_jax import evaluation as ev
manual, data, weights, out = sys.argv[1:5]
config = ev.EvalConfig(dataset="shapesref", split="val", manual_dir=manual, data_dir=data,
                       weights=weights, out=out)
ev.evaluate(config, progress=lambda done, total: time.sleep(5) if done else None)
"""


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["metrics"]


def subprocess_env(env: dict, devices: int = 1) -> dict:
    out = dict(os.environ)
    out.pop("XLA_FLAGS", None)
    out["JAX_PLATFORMS"] = "cpu"
    # Subprocesses share compiled steps through JAX's persistent cache (saves minutes).
    out["JAX_COMPILATION_CACHE_DIR"] = str(env["root"] / "jax_cache")
    out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if devices > 1:
        out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return out


def run_cli(env: dict, args: list[str], devices: int = 1, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "run_eval.py"), *args], cwd=ROOT,
                          env=subprocess_env(env, devices), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def baseline(env: dict) -> Path:
    """The reference: an uninterrupted in-process run on 1 device."""
    out = env["root"] / "baseline"
    before = ev.eval_step._cache_size()  # compilations held by JAX's cache of the step
    assert run_eval.main(shapes_args(env, out)) == 0
    env["baseline_traces"] = ev.eval_step._cache_size() - before
    return out


# --------------------------------------------------------------------------- end to end
def test_end_to_end_files_and_metrics(env: dict, baseline: Path) -> None:
    lines = read_lines(baseline / "samples.jsonl")
    expected = {(r["ref_id"], s["sent_id"]): s["sent"] for r in env["shapes_refs"]
                for s in r["sentences"]}
    assert len(lines) == len(expected)  # one line per sentence
    assert {(x["ref_id"], x["sent_id"]): x["sentence"] for x in lines} == expected
    assert all(set(x) == SAMPLE_FIELDS for x in lines)
    assert lines == sorted(lines, key=lambda x: (x["image_id"], x["ref_id"], x["sent_id"]))
    for x in lines:
        assert 0 <= x["I"] <= x["U"]
        assert x["IoU"] == pytest.approx(x["I"] / x["U"] if x["U"] else 0.0)
        assert 1 <= x["iterations"] <= 3
        if not x["has_candidate"]:  # a miss, counted, never dropped
            assert x["I"] == 0 and x["proposal"] == -1
    # metrics.json agrees with an independent recomputation from the lines.
    rec = json.loads((baseline / "metrics.json").read_text())
    m = rec["metrics"]["val"]
    i = np.asarray([x["I"] for x in lines], np.int64)
    u = np.asarray([x["U"] for x in lines], np.int64)
    iou = np.where(u > 0, i / np.maximum(u, 1), 0.0)
    assert m["n"] == rec["num_samples"] == len(lines)
    assert m["oIoU"] == pytest.approx(i.sum() / u.sum())
    assert m["mIoU"] == pytest.approx(iou.mean())
    for x in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert m[f"prec@{x:g}"] == pytest.approx((iou >= x).mean())
    assert set(m) == {"n", "oIoU", "mIoU", *(f"prec@{x:g}" for x in (0.5, 0.6, 0.7, 0.8, 0.9))}
    assert rec["no_candidate"] == sum(not x["has_candidate"] for x in lines)
    assert rec["truncated_expressions"] == 0
    assert rec["num_images"] == SHAPES.num_val
    # Per expression kind (ShapesRef): rows carry the ref's kind; by_kind recomputed here, with
    # the chance level of a random object (objects are disjoint: 1 / objects in the image).
    kinds = {r["ref_id"]: r["kind"] for r in env["shapes_refs"]}
    assert all(x["kind"] == kinds[x["ref_id"]] for x in lines)
    by_kind = rec["by_kind"]
    assert set(by_kind) == {x["kind"] for x in lines} | {"all"}
    n_objects = {}
    for im in range(SHAPES.num_val):
        scene, _ = generate_example(SHAPES, "val", im)
        n_objects[im + 1] = len(scene.objects)  # image ids count from 1 (no train images)
    for kind, row in by_kind.items():
        sel = [x for x in lines if kind in ("all", x["kind"])]
        assert row["sentences"] == len(sel)
        assert row["mIoU"] == pytest.approx(np.mean([x["IoU"] for x in sel]))
        assert row["chance_mIoU"] == pytest.approx(
            np.mean([1 / n_objects[x["image_id"]] for x in sel]))
    run_cfg = json.loads((baseline / "run_config.json").read_text())
    assert run_cfg["dataset"] == "shapesref" and run_cfg["proposals"] == "gt"
    assert run_cfg["method"]["layer"] == 1  # default 8 clipped to the 2-layer model
    # Fixed canvas and proposal bucket: one compilation per (sentence, text-length) bucket, at
    # most one per batch of 8 images (16 images: 2 batches) ...
    assert 1 <= env["baseline_traces"] <= 2
    # ... and none at all for a second run of the same data, which writes the same lines
    before = ev.eval_step._cache_size()
    assert run_eval.main(shapes_args(env, env["root"] / "again")) == 0
    assert ev.eval_step._cache_size() == before
    assert read_lines(env["root"] / "again" / "samples.jsonl") == lines


def test_refer_fixture_counts_at_original_resolution(env: dict) -> None:
    """refcoco_unc on the refer fixture: I and U are exact pixel counts of the chosen
    instance mask against the referred mask at the image's own size."""
    out = env["root"] / "refer_out"
    args = ["--dataset", "refcoco_unc", "--split", "val",
            "--manual-dir", str(env["root"] / "refer_manual"), "--data-dir",
            str(env["data_dir"]), "--weights", str(env["model"]), "--out", str(out),
            "--canvas", "64", "--no-progress", "--convention", "iterprime"]
    assert run_eval.main(args) == 0
    fx = env["refer"]
    lines = read_lines(out / "samples.jsonl")
    refs = fx["splits"]["val"]
    assert [(x["ref_id"], x["sent_id"]) for x in lines] == [
        (r["ref_id"], s) for r in refs for s in r["sent_ids"]]
    for x in lines:
        gt = fx["anns"][x["ann_id"]]["mask"].astype(bool)
        if x["proposal"] == -1:
            pred = np.zeros_like(gt)
        else:
            assert x["proposal"] in fx["anns_by_image"][x["image_id"]]
            pred = fx["anns"][x["proposal"]]["mask"].astype(bool)
        assert (x["I"], x["U"]) == ((pred & gt).sum(), (pred | gt).sum())
    m = metrics_of(out)["val"]
    i = np.asarray([x["I"] for x in lines])
    u = np.asarray([x["U"] for x in lines])
    assert m["mIoU"] == pytest.approx(np.mean((i + 1e-6) / (u + 1e-6)))


# --------------------------------------------------------------------------- resume
def test_killed_and_resumed(env: dict, baseline: Path) -> None:
    out = env["root"] / "killed"
    samples = out / "samples.jsonl"
    args = shapes_args(env, out)  # 16 images, 8 per step: killed after the first step
    # The run is made slow from here: its progress callback sleeps after every batch.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVAL, str(env["root"] / "shapes_manual"),
                             str(env["data_dir"]), str(env["model"]), str(out)], cwd=ROOT,
                            env=subprocess_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (samples.exists() and samples.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.stderr.read()[-4000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no sample written in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = samples.read_text().count("\n")
    total = sum(len(r["sentences"]) for r in env["shapes_refs"])
    assert 1 <= partial < total
    assert not (out / "metrics.json").exists()
    with samples.open("a") as f:  # a line cut in the middle by the kill
        f.write('{"image_id": 1, "ref_id": 2, "ann_i')
    assert run_eval.main(args) == 0
    assert samples.read_text() == (baseline / "samples.jsonl").read_text()
    assert metrics_of(out) == metrics_of(baseline)
    # A finished run resumes to the same result without computing anything.
    res = ev.evaluate(ev.EvalConfig(dataset="shapesref", split="val",
                                    manual_dir=str(env["root"] / "shapes_manual"),
                                    data_dir=str(env["data_dir"]), weights=str(env["model"]),
                                    out=str(out)))
    assert res.computed == 0 and res.metrics == metrics_of(baseline)


# --------------------------------------------------------------------------- devices
def test_four_devices_identical(env: dict, baseline: Path) -> None:
    out = env["root"] / "four_devices"
    proc = run_cli(env, shapes_args(env, out), devices=4)
    assert "over 4 local device(s)" in proc.stderr
    assert (out / "samples.jsonl").read_text() == (baseline / "samples.jsonl").read_text()
    assert metrics_of(out) == metrics_of(baseline)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_distributed(env: dict, baseline: Path) -> None:
    out = env["root"] / "distributed"
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "run_eval.py"),
         *shapes_args(env, out, "--distributed", "--coordinator", f"127.0.0.1:{port}",
                      "--num-processes", "2", "--process-id", str(i))],
        cwd=ROOT, env=subprocess_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-4000:]
    assert "process 1/2" in results[1][1]
    assert "oIoU" in results[0][0] and "oIoU" not in results[1][0]  # process 0 reports
    assert metrics_of(out) == metrics_of(baseline)
    assert (out / "samples.jsonl").read_text() == (baseline / "samples.jsonl").read_text()
    assert not list(out.glob("samples.p*.jsonl"))  # merged


def test_resume_refuses_other_config(env: dict, baseline: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    before = (baseline / "samples.jsonl").read_text()
    assert run_eval.main(shapes_args(env, baseline, "--iterations", "2")) == 2
    assert "different configuration" in caplog.text and "iterations" in caplog.text
    assert str(baseline) in caplog.text
    assert (baseline / "samples.jsonl").read_text() == before


# --------------------------------------------------------------------------- proposals file
def _results_json(env: dict, path: Path, drop_image: int | None = None) -> Path:
    """COCO-style results (RLE, counts str) from the instance masks, ordered by ann id."""
    inst = json.loads((env["root"] / "shapes_manual" / "shapesref" / "instances.json")
                      .read_text())
    hw = {im["id"]: (im["height"], im["width"]) for im in inst["images"]}
    items = []
    for ann in sorted(inst["annotations"], key=lambda a: a["id"]):
        if ann["image_id"] == drop_image:
            continue
        mask = decode_segmentation(ann["segmentation"], *hw[ann["image_id"]])
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        items.append({"image_id": ann["image_id"], "score": 0.9,
                      "segmentation": {"size": [int(v) for v in rle["size"]],
                                       "counts": rle["counts"].decode("ascii")}})
    path.write_text(json.dumps(items))
    return path


def test_proposals_file_matches_gt(env: dict, baseline: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    path = _results_json(env, env["root"] / "results.json")
    out = env["root"] / "from_file"
    assert run_eval.main(shapes_args(env, out, "--proposals", str(path))) == 0
    assert metrics_of(out) == metrics_of(baseline)
    got, ref = read_lines(out / "samples.jsonl"), read_lines(baseline / "samples.jsonl")
    strip = ("proposal",)  # an index into the file's entries here, an ann id for gt
    assert [{k: v for k, v in x.items() if k not in strip} for x in got] == \
        [{k: v for k, v in x.items() if k not in strip} for x in ref]
    assert json.loads((out / "run_config.json").read_text())["proposals"]["file"] == str(path)

    # An image missing from the file: zero proposals, a warning, its sentences are misses.
    first = ref[0]["image_id"]
    path2 = _results_json(env, env["root"] / "results_missing.json", drop_image=first)
    out2 = env["root"] / "from_file_missing"
    with caplog.at_level(logging.WARNING):
        assert run_eval.main(shapes_args(env, out2, "--proposals", str(path2),
                                         "--limit", "2")) == 0
    assert "1 of 2 images have no entry" in caplog.text and str(path2) in caplog.text
    lines = read_lines(out2 / "samples.jsonl")
    missing = [x for x in lines if x["image_id"] == first]
    assert missing and all(not x["has_candidate"] and x["I"] == 0 for x in missing)
    assert json.loads((out2 / "metrics.json").read_text())["no_candidate"] >= len(missing)


# --------------------------------------------------------------------------- ablation
def test_ablation_table(env: dict, baseline: Path, capsys: pytest.CaptureFixture) -> None:
    out = env["root"] / "ablation"
    capsys.readouterr()
    assert run_eval.main(shapes_args(env, out, "--ablation", "--limit", "3")) == 0
    printed = capsys.readouterr().out
    rows = [r.name for r in ev.ablation_rows(IteRPrimEConfig())]
    assert rows == ["heat-map threshold", "+ proposal selection", "+ PWE", "+ IGRS (2 passes)",
                    "+ IGRS (3 passes)", "+ IGRS (4 passes)", "full"]
    for name in rows:
        assert name in printed
    rec = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in rec["rows"]] == rows
    assert rec["rows"][0]["proposals"] == "heatmap" and rec["rows"][1]["proposals"] == "gt"
    assert rec["rows"][0]["method"]["iterations"] == 1
    assert not rec["rows"][0]["method"]["use_pwe"] and rec["rows"][2]["method"]["use_pwe"]
    # The "full" row is the default run restricted to the same 3 images.
    ref = read_lines(baseline / "samples.jsonl")
    first3 = sorted({x["image_id"] for x in ref})[:3]
    sub = [x for x in ref if x["image_id"] in first3]
    want = ev.metrics_from_samples(sub)
    got = rec["rows"][-1]["metrics"]
    assert {k: got[k] for k in want} == want
    for r in rec["rows"]:  # 95% bootstrap intervals over sentences around each point value
        m = r["metrics"]
        assert m["mIoU_lo"] <= m["mIoU"] <= m["mIoU_hi"]
        assert m["oIoU_lo"] <= m["oIoU"] <= m["oIoU_hi"]
    pwe, sel = rec["rows"][2]["metrics"], rec["rows"][1]["metrics"]
    assert pwe["d_mIoU"] == pytest.approx(pwe["mIoU"] - sel["mIoU"])
    assert pwe["d_mIoU_lo"] <= pwe["d_mIoU"] <= pwe["d_mIoU_hi"]
    assert "d_mIoU" not in rec["rows"][0]["metrics"]
    assert rec["num_samples"] == len(sub)


# --------------------------------------------------------------------------- bad inputs
def test_missing_weights(env: dict, caplog: pytest.LogCaptureFixture) -> None:
    missing = env["root"] / "no_such_weights"
    args = shapes_args(env, env["root"] / "bad1")
    args[args.index("--weights") + 1] = str(missing)
    assert run_eval.main(args) == 2
    assert str(missing) in caplog.text
    assert not (env["root"] / "bad1").exists()


def test_out_naming_a_file(env: dict, caplog: pytest.LogCaptureFixture) -> None:
    """--out a file (or a folder under one): one clear error naming it, before loading."""
    afile = env["root"] / "a_file.txt"
    afile.write_text("x")
    for out in (afile, afile / "run"):
        caplog.clear()
        args = shapes_args(env, out)
        args[args.index("--weights") + 1] = str(env["root"] / "no_such_weights")
        assert run_eval.main(args) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [f"--out {out}: {afile} is a file; --out names the run's output "
                          "folder"], errors
    assert afile.read_text() == "x"


def test_missing_dataset_files(env: dict, caplog: pytest.LogCaptureFixture) -> None:
    manual = env["root"] / "empty_manual"
    manual.mkdir()
    args = ["--dataset", "refcoco+_unc", "--split", "val", "--manual-dir", str(manual),
            "--data-dir", str(env["root"] / "empty_tfds"), "--weights", str(env["model"]),
            "--out", str(env["root"] / "bad2"), "--no-progress"]
    assert run_eval.main(args) == 2
    assert str(manual / "refcoco+" / "refs(unc).p") in caplog.text


def test_bad_proposals_files(env: dict, caplog: pytest.LogCaptureFixture) -> None:
    cases = {"not_json.json": "{oops", "not_list.json": '{"image_id": 1}',
             "no_seg.json": '[{"image_id": 1}]',
             "bad_rle.json": '[{"image_id": 1, "segmentation": {"size": [4], "counts": "x"}}]'}
    for name, text in cases.items():
        path = env["root"] / name
        path.write_text(text)
        caplog.clear()
        assert run_eval.main(shapes_args(env, env["root"] / "bad3", "--proposals",
                                         str(path))) == 2, name
        assert str(path) in caplog.text, name
    nothing = env["root"] / "nothing.json"
    assert run_eval.main(shapes_args(env, env["root"] / "bad3", "--proposals",
                                     str(nothing))) == 2
    assert f"proposals file {nothing} does not exist" in caplog.text
    # A mask whose size is not the image's: named with the file and the image.
    wrong = env["root"] / "wrong_size.json"
    rle = mask_utils.encode(np.asfortranarray(np.ones((5, 7), np.uint8)))
    wrong.write_text(json.dumps([{"image_id": 1, "segmentation": {
        "size": [5, 7], "counts": rle["counts"].decode()}}]))
    caplog.clear()
    assert run_eval.main(shapes_args(env, env["root"] / "bad4", "--proposals", str(wrong),
                                     "--limit", "1")) == 2
    assert str(wrong) in caplog.text and "image 1" in caplog.text


def test_empty_sentence(env: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = write_refer_fixture(tmp_path / "manual")
    refs = pickle.loads(fx["refs_path"].read_bytes())
    victim = next(r for r in refs if r["split"] == "val")
    victim["sentences"][0]["sent"] = "   "
    fx["refs_path"].write_bytes(pickle.dumps(refs, protocol=2))
    args = ["--dataset", "refcoco_unc", "--split", "val", "--manual-dir", str(tmp_path / "manual"),
            "--data-dir", str(tmp_path / "tfds"), "--weights", str(env["model"]),
            "--out", str(tmp_path / "out"), "--canvas", "64", "--no-progress"]
    assert run_eval.main(args) == 2
    assert f"ref_id {victim['ref_id']} sent_id {victim['sentences'][0]['sent_id']}" \
        in caplog.text and "empty sentence" in caplog.text


def test_unknown_split(env: dict, caplog: pytest.LogCaptureFixture) -> None:
    args = shapes_args(env, env["root"] / "bad5")
    args[args.index("--split") + 1] = "testZ"
    assert run_eval.main(args) == 2
    assert "testZ" in caplog.text


# --------------------------------------------------------------------------- method config
def test_truncated_expressions_are_counted(env: dict, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A prompt cut to max_text_length is marked in samples.jsonl, counted in metrics.json and
    logged (no truncation is silent)."""
    out = tmp_path / "cut"
    with caplog.at_level(logging.WARNING):
        assert run_eval.main(shapes_args(env, out, "--max-text-length", "6")) == 0
    lines = read_lines(out / "samples.jsonl")
    cut = [x for x in lines if x.get("truncated")]
    assert cut and all(x["truncated"] is True for x in cut)
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["truncated_expressions"] == len(cut)
    assert f"{len(cut)} expressions were longer than max_text_length=6" in caplog.text


def test_method_json_and_explicit_flags(env: dict, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(env["model"], weights)
    assert resolve_method(weights, 2).layer == 1  # clipped default
    (weights / "method.json").write_text(json.dumps({"layer": 0, "max_text_length": 24,
                                                     "iterations": 2}))
    m = resolve_method(weights, 2)
    assert (m.layer, m.max_text_length, m.iterations) == (0, 24, 2)
    # Flags given on the command line win over method.json; flags not given are absent.
    args = run_eval.build_parser().parse_args(["--iterations", "4", "--no-pwe", "--out", "x"])
    overrides = method_overrides(args)
    assert overrides == {"iterations": 4, "use_pwe": False}
    m = resolve_method(weights, 2, overrides)
    assert (m.layer, m.max_text_length, m.iterations, m.use_pwe) == (0, 24, 4, False)
    (weights / "method.json").write_text(json.dumps({"layers": 0}))
    with pytest.raises(ValueError, match="method.json.*unknown"):
        resolve_method(weights, 2)
    (weights / "method.json").write_text(json.dumps({"layer": 5}))
    with pytest.raises(ValueError, match="layer 5 is out of range.*2 text layers"):
        resolve_method(weights, 2)


def test_every_method_field_has_a_flag() -> None:
    """Each IteRPrimEConfig field is settable from the command line, with its help text."""
    parser = run_eval.build_parser()
    fields = dataclasses.fields(IteRPrimEConfig)
    argv = ["--layer", "2", "--no-use-template", "--template", "a {}", "--no-pwe",
            "--iterations", "5", "--alpha", "0.3", "--stretch-sharpness", "7.5",
            "--stretch-center", "0.25", "--mask-threshold", "0.75", "--keep-rejected",
            "--max-components", "3", "--heat-threshold", "0.4", "--max-text-length", "32",
            "--spacy-model", "x", "--no-empty-if-no-candidate", "--no-primary-tokens", "focus",
            "--no-append-sep", "--no-authors-code", "--parser", "stanza"]
    got = method_overrides(parser.parse_args(argv))
    assert set(got) == {f.name for f in fields}
    want = IteRPrimEConfig(layer=2, use_template=False, template="a {}", use_pwe=False,
                           iterations=5, alpha=0.3, stretch_sharpness=7.5, stretch_center=0.25,
                           mask_threshold=0.75, keep_rejected=True, max_components=3,
                           heat_threshold=0.4, max_text_length=32, spacy_model="x",
                           empty_if_no_candidate=False, no_primary_tokens="focus",
                           append_sep=False, authors_code=False, parser="stanza")
    assert IteRPrimEConfig(**got) == want
    assert method_overrides(parser.parse_args([])) == {}
    helps = {a.dest: a.help for a in parser._actions}  # noqa: SLF001
    for f in fields:
        assert f.metadata["help"] in helps[f.name]


def test_truncate_partial_line(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text('{"a": 1}\n{"b": 2}\n{"c"')
    assert ev.truncate_partial_line(p) == 4
    assert p.read_text() == '{"a": 1}\n{"b": 2}\n'
    assert ev.truncate_partial_line(p) == 0
    p.write_text('{"c"')
    assert ev.truncate_partial_line(p) == 4 and p.read_text() == ""
