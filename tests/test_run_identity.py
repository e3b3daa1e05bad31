"""What a run directory records about its inputs: the weights' content fingerprint (a resume
with other weights is refused, also when every file keeps its name and size), the weights'
real path and the default output directory, whatever the working directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from iterprime_jax import evaluation as ev
from iterprime_jax.evaluation.cli import main
from iterprime_jax.evaluation.fingerprint import CACHE_NAME, file_sha256, weights_fingerprint
from tests.conftest import write_tiny_model
from tests.shapes_fixture import built_shapesref_val

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return built_shapesref_val(tmp_path_factory.mktemp("identity"), 2)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ITERPRIME_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def swap_equal_lines(path: Path) -> None:
    """Swap the first two distinct lines of equal length: same name and size, other bytes."""
    lines = path.read_bytes().split(b"\n")
    i = next(k for k in range(len(lines) - 1) if lines[k].strip())
    j = next(k for k in range(i + 1, len(lines))
             if len(lines[k]) == len(lines[i]) and lines[k] != lines[i])
    lines[i], lines[j] = lines[j], lines[i]
    size = path.stat().st_size
    path.write_bytes(b"\n".join(lines))
    assert path.stat().st_size == size


def test_fingerprint_hashes_contents(tmp_path: Path, own_cache: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, payload in ((a, b"0123456789"), (b, b"9876543210")):
        (d / "params").mkdir(parents=True)
        (d / "params" / "data").write_bytes(payload)
        (d / "method.json").write_text(json.dumps({"layer": 0 if d == a else 1}))
        (d / "training_log.json").write_text(d.name)
    fa, fb = weights_fingerprint(a), weights_fingerprint(b)
    assert fa != fb  # same names, same sizes, other bytes
    assert fa != hashlib.sha256(b"").hexdigest()
    # method.json and the training log do not make other weights
    (b / "params" / "data").write_bytes(b"0123456789")
    assert weights_fingerprint(b) == fa
    # the per-file digests are cached by path, size and mtime ...
    cache = json.loads((own_cache / CACHE_NAME).read_text())
    entry = cache[str((a / "params" / "data").resolve())]
    assert entry[0] == 10 and entry[2] == file_sha256(a / "params" / "data")
    # ... and a file rewritten in place (new mtime) is hashed again
    (a / "params" / "data").write_bytes(b"abcdefghij")
    st = (a / "params" / "data").stat()
    os.utime(a / "params" / "data", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert weights_fingerprint(a) not in (fa, fb)


def test_resume_refuses_other_weights_of_equal_size(shapes: dict[str, Path],
                                                    tmp_path: Path) -> None:
    weights = write_tiny_model(tmp_path / "model")
    config = ev.EvalConfig(dataset="shapesref", split="val", manual_dir=str(shapes["manual"]),
                           data_dir=str(shapes["tfds"]), weights=str(weights),
                           out=str(tmp_path / "out"), limit=1)
    ev.evaluate(config)
    first = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert first["weights"] == str(weights.resolve())
    # another tokenizer in the same files: every name and size unchanged
    swap_equal_lines(weights / "vocab.txt")
    with pytest.raises(ev.EvalError, match="weights_fingerprint"):
        ev.evaluate(config)
    assert json.loads((tmp_path / "out" / "run_config.json").read_text()) == first


def test_defaults_do_not_depend_on_the_working_directory(
        shapes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --weights and no --out, run from a directory that is not the repository: the
    shipped model is found beside the package, recorded with its real path and content
    fingerprint, and the output goes to results/DATASET-SPLIT."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = main(["--dataset", "shapesref", "--split", "val", "--manual-dir", str(shapes["manual"]),
               "--data-dir", str(shapes["tfds"]), "--limit", "1", "--no-progress"])
    assert rc == 0
    out = cwd / "results" / "shapesref-val"
    run_config = json.loads((out / "run_config.json").read_text())
    shipped = ROOT / "weights" / "shapesref-itm"
    assert run_config["weights"] == str(shipped)
    assert run_config["weights_fingerprint"] == weights_fingerprint(shipped)
    assert run_config["weights_fingerprint"] != hashlib.sha256(b"").hexdigest()
    assert json.loads((out / "metrics.json").read_text())["weights"] == str(shipped)
    assert run_config["method"]["layer"] == 0  # the shipped model's method.json


def test_eval_config_defaults() -> None:
    config = ev.EvalConfig(dataset="refcoco_unc", split="testA").with_defaults()
    assert config.out == "results/refcoco_unc-testA"
    assert Path(config.data_dir).is_absolute()
    assert config.manual_dir is None  # RefCOCO's raw files: only the user knows where
    shapes = ev.EvalConfig().with_defaults()
    assert Path(shapes.manual_dir).is_absolute() and shapes.out == "results/shapesref-val"


def test_help_shows_each_effective_default_once() -> None:
    from iterprime_jax.evaluation.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "(default: None)" not in text
    assert "default: 0 from weights/shapesref-itm/method.json, else 8" in text  # --layer
    for chunk in text.split(" --")[1:]:  # one option's help each
        assert chunk.count("(default:") <= 1, chunk


def test_building_a_split_prints_nothing(tmp_path: Path, shapes: dict[str, Path],
                                         capfd: pytest.CaptureFixture,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """TFDS's "Downloading and preparing dataset Unknown size" banner (nothing is downloaded)
    is replaced by one log line with the build time."""
    caplog.set_level("INFO", logger="iterprime_jax.evaluation.index")
    ev.prepare_split(ev.EvalConfig(dataset="shapesref", split="val",
                                   manual_dir=str(shapes["manual"]),
                                   data_dir=str(tmp_path / "tfds")))
    out, _ = capfd.readouterr()
    assert "Downloading" not in out and "prepared" not in out, out
    assert any(r.getMessage().startswith("built TFDS shapesref in ") for r in caplog.records)
