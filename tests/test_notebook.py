"""The notebooks execute top to bottom on local fixtures, through their parameters cell.

papermill injects the fixture parameters after the cell tagged ``parameters``, so the cells a
user runs are the cells tested. The kernel imports this checkout (PYTHONPATH), not whatever
iterprime_jax is installed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from tests.notebook_fixtures import (
    QUOKKA_EXPRESSIONS,
    SHAPES_NUM_VAL,
    notebook_parameters,
    tiny_proposer,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return notebook_parameters(tmp_path_factory.mktemp("notebooks"))


@pytest.fixture(autouse=True)
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def run(name: str, parameters: dict, out_dir: Path) -> nbformat.NotebookNode:
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out),
                               parameters=parameters, cwd=str(NOTEBOOKS), kernel_name="python3",
                               progress_bar=False, execution_timeout=600)
    return nbformat.read(out, as_version=4)


def text_of(cell: nbformat.NotebookNode) -> str:
    parts = []
    for o in cell.get("outputs", []):
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def images_of(cell: nbformat.NotebookNode) -> list[str]:
    return [o["data"]["image/png"] for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]


def cell_with(nb: nbformat.NotebookNode, source_part: str) -> nbformat.NotebookNode:
    cells = [c for c in code_cells(nb) if source_part in c.source]
    assert len(cells) == 1, f"{len(cells)} code cells contain {source_part!r}"
    return cells[0]


def check_parameters_cell(nb: nbformat.NotebookNode, parameters: dict) -> None:
    """A cell tagged `parameters`, and papermill's injected cell right after it, holding the
    fixture values (so the notebook really ran on them)."""
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    k = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[k + 1]
    injected: dict = {}
    exec(nb.cells[k + 1].source, injected)  # plain assignments written by papermill
    assert {n: injected[n] for n in parameters} == parameters


def test_parameters_cells(params: dict) -> None:
    """One cell tagged `parameters` per notebook, in which papermill finds every parameter CI
    sets (an unparsable line there would make papermill inject a value the cell overwrites)."""
    for name, values in params.items():
        path = NOTEBOOKS / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: one cell must be tagged 'parameters'"
        found = set(papermill.inspect_notebook(str(path)))  # papermill's public inspection
        assert set(values) <= found, f"{name}: {set(values) - found} not parsed by papermill"
        assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
def test_quickstart(params: dict, tmp_path: Path) -> None:
    nb = run("quickstart", params["quickstart"], tmp_path)
    check_parameters_cell(nb, params["quickstart"])
    out = "".join(text_of(c) for c in code_cells(nb))
    assert "IGRS pass(es) accepted" in out and "proposal" in out
    assert len(images_of(cell_with(nb, "plot_passes(scene.image, result)"))) == 1


@pytest.mark.slow
def test_segment_your_image(params: dict, tmp_path: Path) -> None:
    p = params["segment_your_image"]
    nb = run("segment_your_image", p, tmp_path)
    check_parameters_cell(nb, p)
    assert "(5, 643, 960)" in text_of(cell_with(nb, "read_proposals(PROPOSALS_FILE"))
    summary = text_of(cell_with(nb, "ij.segment_batch("))
    lines = [line for line in summary.splitlines() if "P(match) per IGRS pass" in line]
    assert len(lines) == len(QUOKKA_EXPRESSIONS)
    for line, expr in zip(lines, QUOKKA_EXPRESSIONS, strict=True):
        assert line.startswith(repr(expr))
        assert re.search(r"P\(match\) per IGRS pass: 0\.\d{3} accepted", line), line
        assert re.search(r"proposal [0-4], mask [1-9]\d* px", line), line  # a proposal chosen
    # one figure per expression, each a real PNG of several panels
    figs = images_of(cell_with(nb, "display(plot_passes(image, r))"))
    assert len(figs) == len(QUOKKA_EXPRESSIONS)
    import base64

    assert all(base64.b64decode(f)[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)


@pytest.mark.slow
def test_segment_your_image_with_mask2former(params: dict, tmp_path: Path) -> None:
    """The proposer path: a (tiny, random) converted Mask2Former loaded by the notebook and run
    by `ij.propose` on the photo, one figure per expression."""
    p = {**params["segment_your_image"], "PROPOSALS_FILE": None, "PROPOSAL_SIZE": [64, 96],
         "PROPOSER": str(tiny_proposer(tmp_path / "m2f")), "EXPRESSIONS": QUOKKA_EXPRESSIONS[:2]}
    nb = run("segment_your_image", p, tmp_path)
    check_parameters_cell(nb, p)
    assert "proposer: " + p["PROPOSER"] in text_of(cell_with(nb, "model = ij.load(BLIP)"))
    assert "proposals: (6, 643, 960)" in text_of(cell_with(nb, "ij.propose(proposer, image"))
    summary = text_of(cell_with(nb, "ij.segment_batch("))
    assert len(re.findall(r"proposal -?\d+, mask \d+ px", summary)) == 2
    assert len(images_of(cell_with(nb, "display(plot_passes(image, r))"))) == 2


@pytest.mark.slow
def test_evaluate_refcoco(params: dict, tmp_path: Path) -> None:
    p = params["evaluate_refcoco"]
    nb = run("evaluate_refcoco", p, tmp_path)
    check_parameters_cell(nb, p)
    assert "'val': " in text_of(cell_with(nb, "prepare_split(config)"))
    # the metrics table printed equals metrics.json, written by the run
    metrics = json.loads((Path(p["OUT"]) / "metrics.json").read_text())
    table = text_of(cell_with(nb, "format_table(result.metrics)"))
    assert "oIoU" in table and "prec@0.5" in table.lower()
    row = next(line for line in table.splitlines() if line.startswith("val"))
    m = metrics["metrics"]["val"]
    assert f"{100 * m['oIoU']:.2f}" in row and f"{100 * m['mIoU']:.2f}" in row
    assert f"{SHAPES_NUM_VAL} images" in table
    # the gallery: GALLERY worst samples, each re-run equal to its record, one figure
    gal = cell_with(nb, "gallery.worst_samples(records, GALLERY)")
    lines = [line for line in text_of(gal).splitlines() if line.startswith("IoU ")]
    assert len(lines) == p["GALLERY"]
    assert all("same)" in line for line in lines), lines
    recs = [json.loads(line) for line in (Path(p["OUT"]) / "samples.jsonl").read_text()
            .splitlines()]
    worst = sorted(r["IoU"] for r in recs)[: p["GALLERY"]]
    assert [float(line.split()[1]) for line in lines] == pytest.approx(worst, abs=5e-4)
    assert len(images_of(gal)) == 1


@pytest.mark.slow
def test_evaluate_refcoco_on_refer_layout(params: dict, tmp_path: Path) -> None:
    """The notebook on its own dataset: RefCOCO (UNC) in the refer layout (refs(unc).p,
    instances.json, COCO train2014 images; tests/refer_fixture.py), gt proposals."""
    from tests.refer_fixture import write_refer_fixture

    fx = write_refer_fixture(tmp_path / "refer")
    p = {**params["evaluate_refcoco"], "DATASET": "refcoco_unc", "MANUAL_DIR": str(fx["root"]),
         "DATA_DIR": str(tmp_path / "tfds"), "OUT": str(tmp_path / "out"), "GALLERY": 2}
    nb = run("evaluate_refcoco", p, tmp_path)
    check_parameters_cell(nb, p)
    recs = [json.loads(line) for line in (Path(p["OUT"]) / "samples.jsonl").read_text()
            .splitlines()]
    refs = fx["splits"]["val"]
    assert [(r["ref_id"], r["sent_id"]) for r in recs] == [
        (r["ref_id"], s) for r in refs for s in r["sent_ids"]]
    metrics = json.loads((Path(p["OUT"]) / "metrics.json").read_text())["metrics"]["val"]
    table = text_of(cell_with(nb, "format_table(result.metrics)"))
    row = next(line for line in table.splitlines() if line.startswith("val"))
    assert f"{100 * metrics['oIoU']:.2f}" in row and f"{100 * metrics['mIoU']:.2f}" in row
    assert f"{len({r['image_id'] for r in refs})} images" in table
    gal = cell_with(nb, "gallery.worst_samples(records, GALLERY)")
    lines = [line for line in text_of(gal).splitlines() if line.startswith("IoU ")]
    assert len(lines) == 2 and all("same)" in line for line in lines), lines

