"""Bad inputs to the evaluator (issue #27): every check that can fail on the command line or
the inputs runs before run_config.json is written, errors are one line naming the flag, no
run is locked by its own failure, metrics.json describes all of samples.jsonl, resume
compares the weights by content, Ctrl-C keeps the finished samples."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import run_eval
from iterprime_jax import evaluation as ev
from iterprime_jax.evaluation import cli
from iterprime_jax.evaluation.index import build_index, open_split
from tests.conftest import write_tiny_model
from tests.shapes_fixture import built_shapesref_val

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bad_inputs")
    return {**built_shapesref_val(root, 4), "model": write_tiny_model(root / "model")}


def args_for(env: dict, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "shapesref", "--split", "val", "--manual-dir", str(env["manual"]),
            "--data-dir", str(env["tfds"]), "--weights", str(env["model"]),
            "--out", str(out), "--no-progress", *extra]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def fails(env: dict, out: Path, caplog: pytest.LogCaptureFixture, *extra: str,
          args: list[str] | None = None) -> str:
    """Runs the CLI, expects exit 2 with one ERROR line and --out untouched; returns it."""
    caplog.clear()
    assert run_eval.main(args or args_for(env, out, *extra)) == 2
    errs = errors(caplog)
    assert len(errs) == 1 and "\n" not in errs[0], errs
    assert "Traceback" not in caplog.text
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return errs[0]


def samples_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- before writing
@pytest.mark.parametrize("flag,value", [("--limit", "0"), ("--limit", "-2"),
                                        ("--batch-size", "0"), ("--batch-size", "-1"),
                                        ("--canvas", "0")])
def test_numbers_below_one(env: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                           flag: str, value: str) -> None:
    msg = fails(env, tmp_path / "out", caplog, flag, value)
    assert msg == f"{flag} must be an integer >= 1, got {value}"


def test_bad_split_spacy_and_dataset_leave_out_untouched(env: dict, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    out = tmp_path / "run"
    args = args_for(env, out, "--limit", "1")
    args[args.index("--split") + 1] = "testZ"
    assert "testZ" in fails(env, out, caplog, args=args)
    msg = fails(env, out, caplog, "--limit", "1", "--spacy-model", "no_such_pipeline_xyz")
    assert msg.startswith("--spacy-model") and "no_such_pipeline_xyz" in msg
    manual = tmp_path / "empty_manual"
    manual.mkdir()
    args = ["--dataset", "refcoco_unc", "--split", "val", "--manual-dir", str(manual),
            "--data-dir", str(tmp_path / "empty_tfds"), "--weights", str(env["model"]),
            "--out", str(out), "--no-progress"]
    assert "refs(unc).p" in fails(env, out, caplog, args=args)
    # The corrected command with the same --out runs.
    assert run_eval.main(args_for(env, out, "--limit", "1")) == 0
    assert (out / "metrics.json").is_file()


def test_missing_stanza_models_refused_before_writing(env: dict, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``--parser stanza`` without Stanza's English models: one line naming the flag, the
    directory searched and the fixes, before run_config.json is written."""
    pytest.importorskip("stanza")
    from iterprime_jax.method import language

    where = tmp_path / "no_stanza_models"
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(where))
    language._stanza_parser.cache_clear()
    out = tmp_path / "run"
    msg = fails(env, out, caplog, "--limit", "1", "--parser", "stanza")
    assert msg.startswith("--parser stanza") and str(where) in msg
    # --stanza-dir wins over $STANZA_RESOURCES_DIR (monkeypatch restores the variable)
    flag_dir = tmp_path / "flag_dir"
    msg = fails(env, out, caplog, "--limit", "1", "--parser", "stanza", "--stanza-dir",
                str(flag_dir))
    assert str(flag_dir) in msg and str(where) not in msg
    assert 'stanza.download("en")' in msg and "--parser spacy" in msg


def test_failed_start_reinitialised(env: dict, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A run dir left by a run that failed before its first sample (an older version wrote
    run_config.json first) is taken over by the corrected command; one with samples is not,
    and the refusal lists the differing fields one per line."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text(json.dumps({"version": 2, "split": "testZ"}))
    (out / "samples.jsonl").write_text("")
    assert run_eval.main(args_for(env, out, "--limit", "1")) == 0
    before = (out / "samples.jsonl").read_text()
    assert before
    caplog.clear()
    assert run_eval.main(args_for(env, out, "--limit", "1", "--iterations", "2")) == 2
    (msg,) = errors(caplog)
    lines = msg.splitlines()
    assert "different configuration" in lines[0]
    assert lines[1:] == ["  method.iterations: 3 -> 2"] or \
        (len(lines) == 2 and lines[1].startswith("  method.iterations:")), lines
    assert (out / "samples.jsonl").read_text() == before


def test_proposals_fixed_in_place(env: dict, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """A proposals file of another split is refused before anything is written; once fixed,
    the same command runs."""
    props = tmp_path / "props.json"
    rle = {"size": [64, 64], "counts": [64 * 64]}
    props.write_text(json.dumps([{"image_id": 987654, "segmentation": rle}]))
    out = tmp_path / "run"
    msg = fails(env, out, caplog, "--limit", "1", "--proposals", str(props))
    assert f"--proposals {props}" in msg and "987654" in msg and "shapesref/val" in msg
    split = open_split(ev.EvalConfig(dataset="shapesref", split="val",
                                        manual_dir=str(env["manual"]),
                                        data_dir=str(env["tfds"])))
    images = build_index(split.light, split.name)
    # Entries of the split, but of no evaluated image (--limit 1): refused too.
    last = images[-1]
    h, w = last.hw
    props.write_text(json.dumps([{"image_id": last.image_id,
                                  "segmentation": {"size": [h, w], "counts": [h * w]}}]))
    msg = fails(env, out, caplog, "--limit", "1", "--proposals", str(props))
    assert "no entry for any of the 1 evaluated images" in msg
    first = images[0]
    h, w = first.hw
    # A mask of the wrong size fails on the first batch: what the run wrote is removed.
    props.write_text(json.dumps([{"image_id": first.image_id,
                                  "segmentation": {"size": [h + 1, w], "counts": [h * w + w]}}]))
    assert str(props) in fails(env, out, caplog, "--limit", "1", "--proposals", str(props))
    props.write_text(json.dumps([{"image_id": first.image_id,
                                  "segmentation": {"size": [h, w], "counts": [h * w]}}]))
    assert run_eval.main(args_for(env, out, "--limit", "1", "--proposals", str(props))) == 0


# --------------------------------------------------------------------------- paths
def test_path_flags_named(env: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    afile = tmp_path / "a_file"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    proc = Path("/proc/x")
    cases = [
        (["--data-dir", str(proc)], "--data-dir /proc/x"),
        (["--data-dir", str(afile)], f"--data-dir {afile} is a file"),
        (["--record", str(proc / "rec.json")], "--record /proc/x/rec.json"),
        (["--record", str(folder)], f"--record {folder} is a folder"),
        (["--record", str(afile / "rec.json")], f"--record {afile}/rec.json"),
        (["--proposals", str(folder)], f"--proposals {folder} is a folder"),
        (["--proposals", "mask2former", "--save-proposals", str(folder)],
         f"--save-proposals {folder} is a folder"),
    ]
    for extra, start in cases:
        args = args_for(env, out, "--limit", "1")
        i = args.index(extra[0]) if extra[0] in args else None
        if i is not None:
            args[i + 1] = extra[1]
            extra = extra[2:]
        msg = fails(env, out, caplog, args=[*args, *extra])
        assert msg.startswith(start), (msg, start)
    args = args_for(env, proc, "--limit", "1")
    caplog.clear()
    assert run_eval.main(args) == 2
    assert errors(caplog)[0].startswith("--out /proc/x: cannot create it")
    monkeypatch.setenv("ITERPRIME_CACHE", str(afile))
    assert fails(env, out, caplog, "--limit", "1").startswith(
        f"ITERPRIME_CACHE={afile} is a file")
    assert afile.read_text() == "x" and not any(folder.iterdir())


# --------------------------------------------------------------------------- batch size
def test_batch_larger_than_the_images(env: dict, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert run_eval.main(args_for(env, out, "--limit", "2", "--batch-size", "1000000")) == 0
    assert "batch size 1000000 capped to the 2 images" in caplog.text
    assert len({r["image_id"] for r in samples_of(out)}) == 2


# --------------------------------------------------------------------------- metrics, resume
def test_smaller_limit_on_a_fuller_run_refused(env: dict, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    assert run_eval.main(args_for(env, out, "--limit", "3")) == 0
    files = {p.name: p.read_text() for p in out.iterdir()}
    caplog.clear()
    assert run_eval.main(args_for(env, out, "--limit", "2")) == 2
    (msg,) = errors(caplog)
    assert "--limit" in msg and "metrics.json describes all of samples.jsonl" in msg
    assert {p.name: p.read_text() for p in out.iterdir()} == files
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == len(samples_of(out))


def test_resume_with_weights_copied_elsewhere(env: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = ev.EvalConfig(dataset="shapesref", split="val", manual_dir=str(env["manual"]),
                           data_dir=str(env["tfds"]), weights=str(env["model"]),
                           out=str(out), limit=1)
    first = ev.evaluate(config)
    copy = shutil.copytree(env["model"], tmp_path / "copy_of_model")
    again = ev.evaluate(config.replace(weights=str(copy)))
    assert first.computed > 0 and again.computed == 0
    assert again.metrics == first.metrics


# --------------------------------------------------------------------------- distributed
def test_distributed_flags(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    for extra, needle in ((["--distributed"], "--coordinator"),
                          (["--distributed", "--coordinator", "localhost:1",
                            "--num-processes", "2", "--process-id", "2"],
                           "--process-id 2 must be < --num-processes 2"),
                          (["--process-id", "0"], "--process-id given without --distributed")):
        proc = subprocess.run([sys.executable, str(ROOT / "run_eval.py"), *extra,
                               "--out", str(tmp_path / "out"), "--no-progress"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "ERROR" in lines[0] and needle in lines[0], lines
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c(env: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self: cli._Bar, done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._Bar, "__call__", interrupt)
    out = tmp_path / "run"
    args = [a for a in args_for(env, out, "--limit", "3", "--batch-size", "1")
            if a != "--no-progress"]
    assert run_eval.main(args) == 130
    assert errors(caplog) == ["interrupted; rerun the same command to resume"]
    kept = samples_of(out)
    assert kept and len({r["image_id"] for r in kept}) == 1
    monkeypatch.undo()
    assert run_eval.main([*args, "--no-progress"]) == 0
    assert len({r["image_id"] for r in samples_of(out)}) == 3
