"""The committed notebooks as a Colab user opens them: no papermill test values injected, an
install cell fed by one INSTALL_FROM parameter, and the quickstart's model reachable without a
checkout (the package's own copy of the shipped model)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from iterprime_jax.shipped import SHAPESREF_MODEL

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart", "segment_your_image", "evaluate_refcoco")


def parameters_of(nb: nbformat.NotebookNode) -> dict:
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, values)  # plain assignments
    return values


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_runs_as_stored(name: str) -> None:
    ids = [c.get("id") for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]]
    assert len(set(ids)) == len(ids), "cell ids must be unique"
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "injected-parameters" not in tags
    assert tags.count("parameters") == 1
    params = parameters_of(nb)
    assert params["INSTALL_FROM"] is None  # documented there; no placeholder URL
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, s in enumerate(code) if "INSTALL_FROM =" in s)
    install = code[k + 1]  # right after the parameters, before any iterprime_jax import
    assert 'pip", "install"' in install and "INSTALL_FROM" in install
    assert not any("import iterprime_jax" in s or "from iterprime_jax" in s for s in code[:k + 2])
    for s in code:
        ast.parse("\n".join(line for line in s.splitlines() if not line.startswith("%")))
    for value in params.values():  # no test fixture or repository-relative path
        assert not (isinstance(value, str) and value.startswith("../")), value


def test_quickstart_default_model_is_the_package_copy() -> None:
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    assert parameters_of(nb)["WEIGHTS"] is None
    assert any("ij.load(WEIGHTS or SHAPESREF_MODEL)" in c.source for c in nb.cells)
    assert (SHAPESREF_MODEL / "blip_config.json").is_file()
    assert (SHAPESREF_MODEL / "params").is_dir()
