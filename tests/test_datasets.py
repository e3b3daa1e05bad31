"""The library apart from the ShapesRef project: `iterprime_jax` and its evaluator import no
ShapesRef or training code, and datasets reach the evaluator through `evaluation.datasets`
(entry points read lazily, `register_dataset`, a clear error for an unknown name)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from iterprime_jax.evaluation import EvalConfig, EvalError
from iterprime_jax.evaluation import datasets as ds

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> list[str]:
    """The `sys.modules` names after running `code` in a fresh interpreter."""
    run = code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_library_and_refcoco_path_import_no_shapesref():
    mods = _modules_after(
        "import iterprime_jax, iterprime_jax.evaluation.runner, iterprime_jax.evaluation.cli\n"
        "import iterprime_jax.evaluation.ablation, iterprime_jax.evaluation.index\n"
        "from iterprime_jax.evaluation import EvalConfig\n"
        "from iterprime_jax.evaluation.cli import build_parser\n"
        "from iterprime_jax.evaluation.datasets import dataset_hooks, dataset_names\n"
        "build_parser()\n"
        "c = EvalConfig(dataset='refcoco_unc', weights='w', manual_dir='m').with_defaults()\n"
        "assert dataset_hooks('refcoco_unc') is None and 'shapesref' in dataset_names()\n")
    assert "iterprime_jax.evaluation.runner" in mods  # the imports above did run
    leaked = [m for m in mods if m == "shapesref" or m.startswith("shapesref.")
              or ".shapesref" in m or ".training" in m]
    assert not leaked, leaked


def test_library_sources_import_no_project_code():
    for path in (ROOT / "iterprime_jax").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert "shapesref" not in s and "training" not in s, (path, s)


def test_entry_point_loads_only_the_requested_name(monkeypatch):
    loaded: list[str] = []

    class FakeEntryPoint:
        def __init__(self, name: str, hooks: ds.DatasetHooks | None):
            self.name, self.value, self.hooks = name, f"fake:{name}", hooks

        def load(self) -> ds.DatasetHooks | None:
            loaded.append(self.name)
            return self.hooks

    eps = {"toy": FakeEntryPoint("toy", ds.DatasetHooks(name="toy")),
           "other": FakeEntryPoint("other", ds.DatasetHooks(name="other")),
           "broken": FakeEntryPoint("broken", None)}
    monkeypatch.setattr(ds, "_entry_points", lambda: eps)
    assert ds.dataset_names()[-3:] == ("broken", "other", "toy")  # names: nothing loaded
    assert loaded == []
    assert ds.dataset_hooks("refcoco_unc") is None and loaded == []
    assert ds.dataset_hooks("toy").name == "toy"
    assert loaded == ["toy"]
    with pytest.raises(ValueError, match="must name a DatasetHooks"):
        ds.dataset_hooks("broken")


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; known: refcoco_unc, .*"
                                         r"phrasecut"):
        ds.dataset_hooks("nope")
    with pytest.raises(EvalError, match="unknown dataset 'nope'"):
        EvalConfig(dataset="nope").with_defaults()
    assert ds.is_known("refcoco_plus_unc") and not ds.is_known("nope")


def test_register_dataset_supplies_defaults(tmp_path):
    prepared: list[str] = []
    hooks = ds.DatasetHooks(name="toyset", prepare=lambda d: prepared.append(str(d)),
                            default_manual_dir=lambda: tmp_path / "raw",
                            default_weights=lambda: "some/weights",
                            format_report=lambda r: f"report {r}")
    ds.register_dataset(hooks)
    try:
        assert "toyset" in ds.dataset_names() and ds.dataset_hooks("toyset") is hooks
        c = EvalConfig(dataset="toyset").with_defaults()
        assert c.manual_dir == str(tmp_path / "raw") and c.weights == "some/weights"
        assert c.out == "results/toyset-val"
        given = EvalConfig(dataset="toyset", weights="mine", manual_dir="x").with_defaults()
        assert given.weights == "mine" and given.manual_dir == "x"
    finally:
        ds.unregister_dataset("toyset")
    assert "toyset" not in ds.dataset_names()
    # a library dataset has no default model of its own: the library's shipped demo model
    from iterprime_jax.shipped import SHAPESREF_MODEL

    assert EvalConfig(dataset="refcoco_unc").with_defaults().weights == str(
        SHAPESREF_MODEL.resolve())


def test_shapesref_is_registered_by_its_entry_point():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group=ds.ENTRY_POINT_GROUP)}
    assert eps.get("shapesref") == "shapesref.evaluation:DATASET", (
        "the package metadata lacks the entry point: reinstall (pip install -e .)")
    hooks = ds.dataset_hooks("shapesref")
    assert hooks is not None and hooks.name == "shapesref"
    c = EvalConfig().with_defaults()  # the default run: ShapesRef val, the shipped model
    assert c.dataset == "shapesref" and c.split == "val"
    assert Path(str(c.weights)).is_dir() and (Path(str(c.weights)) / "blip_config.json").is_file()
    assert c.manual_dir is not None and Path(c.manual_dir).name == "shapesref"


def test_by_kind_report_uses_the_library_metrics_and_convention():
    import numpy as np

    from iterprime_jax.metrics import summarize
    from shapesref.by_kind import summarize_by_kind

    samples = [  # IoU exactly 0.5, an empty union, a miss, a hit
        {"kind": "attribute", "I": 50, "U": 100, "has_candidate": True, "ref_id": 1},
        {"kind": "attribute", "I": 0, "U": 0, "has_candidate": False, "ref_id": 1},
        {"kind": "relation", "I": 0, "U": 40, "has_candidate": True, "ref_id": 2},
        {"kind": "relation", "I": 90, "U": 100, "has_candidate": True, "ref_id": 2},
    ]
    chance = {1: 0.25, 2: 0.5}
    for convention in ("standard", "iterprime", "phrasecut"):
        table = summarize_by_kind(samples, chance, convention)
        for kind, rows in (("attribute", samples[:2]), ("relation", samples[2:]),
                           ("all", samples)):
            ref = summarize(np.array([s["I"] for s in rows]), np.array([s["U"] for s in rows]),
                            convention)
            for key in ("mIoU", "oIoU", "prec@0.5"):
                assert table[kind][key] == ref[key], (convention, kind, key)
        assert table["all"]["sentences"] == 4 and table["all"]["no_candidate"] == 1
        assert table["all"]["chance_mIoU"] == 0.375
    # the conventions differ here: IoU 0.5 counts only under >= (standard); the empty union
    # scores 1 only under iterprime
    assert summarize_by_kind(samples, chance, "standard")["attribute"]["prec@0.5"] == 0.5
    assert summarize_by_kind(samples, chance, "phrasecut")["attribute"]["prec@0.5"] == 0.0
    assert summarize_by_kind(samples, chance, "iterprime")["attribute"]["prec@0.5"] == 1.0
