"""Issue 20, what a user sets and what a device cannot hold: ``--precision`` on the evaluation
and one-image CLIs reaches the ITM model and the Mask2Former proposer and is part of a run's
identity (a resume at another precision is refused; a run_config.json written before the
setting existed resumes at the default); a batch too large for the device memory is an error
naming the setting (``batch_size`` / ``max_batch``) and its value, chained to XLA's error,
found either by the pre-check against the devices' reported memory (simulated here: a CPU
reports none) or from XLA's RESOURCE_EXHAUSTED (simulated); other runtime errors pass through
unchanged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from iterprime_jax import evaluation as ev
from iterprime_jax import memory
from iterprime_jax.evaluation import device as evd
from iterprime_jax.evaluation.cli import main as eval_main
from iterprime_jax.models.mask2former import propose as m2f_propose
from tests.conftest import write_tiny_model
from tests.notebook_fixtures import tiny_proposer
from tests.shapes_fixture import built_shapesref_val

NUM_VAL = 3
SMALL_PROPOSALS = ["--proposal-short-edge", "96", "--proposal-max-size", "160"]
OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes."


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    return {**built_shapesref_val(root, NUM_VAL),
            "model": write_tiny_model(root / "model"), "m2f": tiny_proposer(root / "m2f")}


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITERPRIME_CACHE", str(tmp_path / "cache"))


def eval_args(env: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--dataset", "shapesref", "--split", "val", "--manual-dir", str(env["manual"]),
            "--data-dir", str(env["tfds"]), "--weights", str(env["model"]), "--out", str(out),
            "--no-progress", *extra]


def eval_config(env: dict[str, Path], out: Path, **kw) -> ev.EvalConfig:
    return ev.EvalConfig(dataset="shapesref", split="val", manual_dir=str(env["manual"]),
                         data_dir=str(env["tfds"]), weights=str(env["model"]), out=str(out),
                         **kw)


def spy_precisions(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The matmul precision of every evaluator `Device` and `Proposer` built."""
    seen: dict[str, list[str]] = {"device": [], "proposer": []}
    for name, cls in (("device", evd.Device), ("proposer", m2f_propose.Proposer)):
        init = cls.__init__

        def spy(self, model, *a, _init=init, _name=name, **kw):
            _init(self, model, *a, **kw)
            seen[_name].append(self.precision)

        monkeypatch.setattr(cls, "__init__", spy)
    return seen


# --------------------------------------------------------------------------- precision
def test_eval_cli_precision_reaches_both_models_and_the_run_identity(
        env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    seen = spy_precisions(monkeypatch)
    m2f = ["--proposals", "mask2former", "--proposer-weights", str(env["m2f"]),
           *SMALL_PROPOSALS]
    high, highest = tmp_path / "high", tmp_path / "highest"
    assert eval_main(eval_args(env, high, "--precision", "high", *m2f)) == 0
    assert seen == {"device": ["high"], "proposer": ["high"]}
    assert json.loads((high / "run_config.json").read_text())["precision"] == "high"
    assert eval_main(eval_args(env, highest, *m2f)) == 0  # the default
    assert seen == {"device": ["high", "highest"], "proposer": ["high", "highest"]}
    assert json.loads((highest / "run_config.json").read_text())["precision"] == "highest"
    if jax.default_backend() == "cpu":  # float32 products whatever the setting
        assert (high / "samples.jsonl").read_text() == (highest / "samples.jsonl").read_text()
    # a resume at another precision is refused, naming it and both values
    before = (high / "samples.jsonl").read_text()
    caplog.clear()
    assert eval_main(eval_args(env, high, *m2f)) == 2
    assert "different configuration" in caplog.text
    assert "\n  precision: 'high' -> 'highest'" in caplog.text
    assert (high / "samples.jsonl").read_text() == before


def test_run_config_without_precision_resumes_at_the_default(
        env: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run directory written before the setting existed ran at "highest": a default run
    resumes it (nothing recomputed), another precision is refused."""
    out = tmp_path / "old"
    first = ev.evaluate(eval_config(env, out, limit=2))
    assert first.computed > 0
    cfg = json.loads((out / "run_config.json").read_text())
    del cfg["precision"]
    (out / "run_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    samples = (out / "samples.jsonl").read_text()
    again = ev.evaluate(eval_config(env, out, limit=2))
    assert again.computed == 0 and (out / "samples.jsonl").read_text() == samples
    with pytest.raises(ev.EvalError, match=r"precision: 'highest' -> 'default'"):
        ev.evaluate(eval_config(env, out, limit=2, precision="default"))


def test_bad_precision_names_the_setting(env: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    from iterprime_jax.segment_cli import main as segment_main

    with pytest.raises(SystemExit) as e:
        eval_main(eval_args(env, tmp_path / "x", "--precision", "fastest"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --precision: invalid choice: 'fastest'" in err and "'highest'" in err
    with pytest.raises(SystemExit):
        segment_main(["--weights", str(env["model"]), "--image", "x.png", "--text", "a",
                      "--out", str(tmp_path / "m.png"), "--precision", "bf16"])
    assert "argument --precision: invalid choice: 'bf16'" in capsys.readouterr().err
    with pytest.raises(ev.EvalError, match=r"precision must be one of \('highest', 'high', "
                                           r"'default'\), got 'float32'"):
        ev.evaluate(eval_config(env, tmp_path / "y", precision="float32"))
    assert not (tmp_path / "y").exists()


def test_segment_cli_precision_reaches_both_models(env: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from iterprime_jax.models import loading
    from iterprime_jax.segment_cli import main as segment_main

    loaded: list[tuple[str, str]] = []
    real_load = loading.load

    def spy(path, *a, **kw):
        model = real_load(path, *a, **kw)
        loaded.append((type(model.config).__name__, model.precision))
        return model

    monkeypatch.setattr(loading, "load", spy)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(tmp_path / "img.png")
    args = ["--weights", str(env["model"]), "--image", str(tmp_path / "img.png"), "--text",
            "the red circle", "--out", str(tmp_path / "m.png"), "--layer", "0",
            "--proposer-weights", str(env["m2f"]), *SMALL_PROPOSALS]
    assert segment_main([*args, "--precision", "default"]) == 0
    assert loaded == [("BlipConfig", "default"), ("Mask2FormerConfig", "default")]
    assert segment_main(args) == 0
    assert loaded[2:] == [("BlipConfig", "highest"), ("Mask2FormerConfig", "highest")]


# --------------------------------------------------------------------------- device memory
def test_oom_error_is_recognised() -> None:
    assert memory.is_out_of_memory(jax.errors.JaxRuntimeError(OOM))
    assert memory.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: CUDA out of memory"))
    assert not memory.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: other"))
    assert not memory.is_out_of_memory(MemoryError(OOM))  # not XLA's
    assert memory.bytes_limit(jax.local_devices()) is None or jax.default_backend() != "cpu"


def test_memory_check_compiles_once_and_the_call_reuses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-check's compilation is the one the call runs (no second backend compile), and
    a shape already checked is not compiled or measured again."""
    compiles: list[str] = []
    recording = [False]

    def listen(name: str, secs: float, **kw) -> None:
        if recording[0] and name.endswith("backend_compile_duration"):
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 1.0)
    x = jnp.full((37, 41), 0.5)  # a shape no other test compiles
    monkeypatch.setattr(memory, "memory_stats", lambda d: {"bytes_limit": 2**30})
    check = memory.MemoryCheck(jax.local_devices())
    assert check.limit == 2**30
    recording[0] = True
    try:
        assert check.too_large(f, "k", x) is None
        first = len(compiles)
        y = jax.block_until_ready(check.run(f, "k", (x,), "call", ValueError))
        assert check.too_large(f, "k", x) is None
    finally:
        recording[0] = False
    assert first >= 1 and len(compiles) == first
    np.testing.assert_allclose(np.asarray(y), np.tanh(np.full((37, 41), 0.5)) @
                               np.full((41, 37), 0.5) + 1.0, rtol=1e-5)
    monkeypatch.setattr(memory, "memory_stats", lambda d: {"bytes_limit": 16})
    with pytest.raises(ValueError, match=r"^call: it needs \d+\.\d KiB per device, the 1 x "
                                         r"\S+ device\(s\) hold 16 B$"):
        memory.MemoryCheck(jax.local_devices()[:1]).run(
            f, "k", (x,), "call", lambda call, detail: ValueError(f"{call}: {detail}"))


def raising(err: BaseException):
    def step(*args, **kwargs):
        raise err
    return step


def test_eval_step_out_of_memory_names_batch_size(env: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    err = jax.errors.JaxRuntimeError(OOM)
    monkeypatch.setattr(evd, "eval_step", raising(err))
    with pytest.raises(ev.EvalError) as e:
        ev.evaluate(eval_config(env, tmp_path / "out", batch_size=2))
    msg = str(e.value)
    assert msg.startswith("batch_size 2 (--batch-size) is too large for the device memory")
    assert "a step of 2 images (canvas 128, 4 sentences and 8 proposals per image" in msg
    assert f"{len(jax.local_devices())} x {jax.local_devices()[0].device_kind}" in msg
    assert "RESOURCE_EXHAUSTED" in msg and "pass a smaller batch_size (--batch-size), e.g. 1" in msg
    assert e.value.__cause__ is err  # XLA's full message stays available


def test_cli_reports_out_of_memory(env: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(evd, "eval_step", raising(jax.errors.JaxRuntimeError(OOM)))
    assert eval_main(eval_args(env, tmp_path / "out", "--batch-size", "1")) == 2
    assert "batch_size 1 (--batch-size) is too large" in caplog.text
    assert "already one image per device" in caplog.text


def test_other_runtime_errors_pass_through(env: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    err = jax.errors.JaxRuntimeError("INTERNAL: something else broke")
    monkeypatch.setattr(evd, "eval_step", raising(err))
    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        ev.evaluate(eval_config(env, tmp_path / "out", batch_size=2))
    assert e.value is err


def test_precheck_against_reported_memory(env: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With a device reporting 1 KiB, the first compiled step is refused before it runs,
    naming batch_size; with a roomy report the run matches the unchecked one and the check
    compiles once per shape."""
    unchecked = ev.evaluate(eval_config(env, tmp_path / "free", batch_size=1)).out
    runs = []
    real_step = evd.eval_step

    class Counting:
        def __call__(self, *a):
            runs.append(1)
            return real_step(*a)

        def lower(self, *a):
            return real_step.lower(*a)

    monkeypatch.setattr(evd, "eval_step", Counting())
    monkeypatch.setattr(memory, "memory_stats", lambda d: {"bytes_limit": 1024})
    with pytest.raises(ev.EvalError) as e:
        ev.evaluate(eval_config(env, tmp_path / "tiny", batch_size=2))
    msg = str(e.value)
    assert msg.startswith("batch_size 2 (--batch-size) is too large for the device memory")
    assert "device(s) hold 1.0 KiB" in msg and "e.g. 1" in msg and not runs
    # a roomy device: every shape checked once, results unchanged
    keys: list = []
    checked: list = []
    too_large, compiled_bytes = memory.MemoryCheck.too_large, memory.compiled_bytes

    def spy_check(self, fn, key, *args):
        keys.append(key)
        return too_large(self, fn, key, *args)

    def spy_bytes(compiled):
        checked.append(1)
        return compiled_bytes(compiled)

    monkeypatch.setattr(memory.MemoryCheck, "too_large", spy_check)
    monkeypatch.setattr(memory, "compiled_bytes", spy_bytes)
    monkeypatch.setattr(memory, "memory_stats", lambda d: {"bytes_limit": 64 * 2**30})
    out = ev.evaluate(eval_config(env, tmp_path / "roomy", batch_size=1)).out
    assert len(runs) == NUM_VAL and len(keys) == 2 * NUM_VAL
    assert len(checked) == len(set(keys)) < len(keys)
    assert (out / "samples.jsonl").read_text() == (unchecked / "samples.jsonl").read_text()


# --------------------------------------------------------------------------- the proposer
@pytest.fixture(scope="module")
def proposer_model(env: dict[str, Path]):
    import iterprime_jax as ij

    return ij.load(env["m2f"])


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(2)]


def test_proposer_out_of_memory_names_max_batch(proposer_model,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from iterprime_jax.models.mask2former.preprocess import ProposeConfig

    small = ProposeConfig(short_edge=96, max_size=160)
    err = jax.errors.JaxRuntimeError(OOM)
    monkeypatch.setattr(m2f_propose, "propose_step", raising(err))
    proposer = m2f_propose.Proposer(proposer_model, small, max_batch=2)
    with pytest.raises(memory.DeviceMemoryError) as e:
        proposer(_images())
    assert str(e.value).startswith("max_batch 2 is too large for the device memory: a "
                                   "Mask2Former call on 2 images of 96x128 px")
    assert "pass a smaller max_batch, e.g. 1" in str(e.value) and e.value.__cause__ is err
    other = jax.errors.JaxRuntimeError("INTERNAL: not memory")
    monkeypatch.setattr(m2f_propose, "propose_step", raising(other))
    with pytest.raises(jax.errors.JaxRuntimeError) as e2:
        proposer(_images())
    assert e2.value is other


def test_proposer_precheck(proposer_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from iterprime_jax.models.mask2former.preprocess import ProposeConfig

    monkeypatch.setattr(memory, "memory_stats", lambda d: {"bytes_limit": 2048})
    proposer = m2f_propose.Proposer(proposer_model, ProposeConfig(short_edge=96, max_size=160),
                                    max_batch=1)
    with pytest.raises(memory.DeviceMemoryError, match=r"max_batch 1 is too large .* hold "
                                                       r"2\.0 KiB\); max_batch is already 1"):
        proposer(_images())


def test_eval_with_proposer_out_of_memory_names_batch_size(
        env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(m2f_propose, "propose_step", raising(jax.errors.JaxRuntimeError(OOM)))
    caplog.set_level(logging.ERROR)
    args = eval_args(env, tmp_path / "out", "--batch-size", "2", "--proposals", "mask2former",
                     "--proposer-weights", str(env["m2f"]), *SMALL_PROPOSALS)
    assert eval_main(args) == 2
    assert ("batch_size 2 (--batch-size) is too large for the device memory: the Mask2Former "
            "proposals of a batch (a Mask2Former call on 2 images") in caplog.text
