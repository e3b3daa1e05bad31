"""Small local inputs for the notebooks (tests/test_notebook.py, and the run whose outputs are
stored in the committed notebooks):

* ``quokka_proposals(path)``: class-agnostic proposals for ``tests/data/quokka.jpg`` as a COCO-style
  RLE JSON list: the annotated animal polygon, the rest of the image, and three fixed regions
  (top strip, bottom-left quarter, right third) — stand-ins for Mask2Former's masks.
* ``small_shapesref(root)``: a ShapesRef validation split of 6 images, in the refer layout.
* ``notebook_parameters(...)``: the papermill parameters each notebook runs with on them.

``python -m tests.notebook_fixtures DIR`` writes the data and prints the parameters (JSON);
``python -m tests.notebook_fixtures --store`` executes the notebooks in place on them (the
outputs stored in the committed notebooks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
QUOKKA = DATA / "quokka.jpg"
QUOKKA_EXPRESSIONS = ["the quokka", "the small animal's left ear", "the sandy ground at the bottom"]
SHAPES_NUM_VAL = 6


def quokka_masks() -> np.ndarray:
    """(5, H, W) bool masks for the quokka photo (see the module docstring)."""
    with Image.open(QUOKKA) as im:
        w, h = im.size
    ann = json.loads((DATA / "quokka_annotations.json").read_text())
    poly = [[v for p in ann["polygons"][0]["keypoints"] for v in (p["x"], p["y"])]]
    animal = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, h, w))).astype(bool)
    yy, xx = np.mgrid[:h, :w]
    top = yy < h // 5
    bottom_left = (yy >= h // 2) & (xx < w // 2)
    right = xx >= 2 * w // 3
    return np.stack([animal, ~animal, top & ~animal, bottom_left & ~animal, right & ~animal])


def quokka_proposals(path: Path) -> Path:
    """Write `quokka_masks()` as [{"image_id": 0, "segmentation": RLE, "score": 1.0}, ...]."""
    items = []
    for m in quokka_masks():
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        items.append({"image_id": 0, "score": 1.0,
                      "segmentation": {"size": [int(v) for v in rle["size"]],
                                       "counts": rle["counts"].decode("ascii")}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    return path


def small_shapesref(root: Path) -> Path:
    """A ShapesRef val split of `SHAPES_NUM_VAL` images under `root` (refer layout)."""
    from shapesref import ShapesRefConfig, write_shapesref

    write_shapesref(root, ShapesRefConfig(num_train=0, num_val=SHAPES_NUM_VAL, num_test_a=0,
                                          num_test_b=0, seed=3))
    return root


def tiny_proposer(path: Path) -> Path:
    """A tiny random Mask2Former (the one of tests/test_propose_e2e.py, 6 queries) saved by
    transformers and converted into `path` (needs torch: the [test] extra)."""
    from iterprime_jax.models.conversion import convert_hf_checkpoint
    from tests.test_propose_e2e import tiny_hf_mask2former

    if not (path / "converted").exists():
        tiny_hf_mask2former().save_pretrained(str(path / "hf"))
        convert_hf_checkpoint(path / "hf", path / "converted")
    return path / "converted"


def notebook_parameters(work: Path, relative_to: Path | None = None) -> dict[str, dict[str, Any]]:
    """Write the fixtures under `work` and return {notebook name: papermill parameters}.
    Paths are absolute, or relative to `relative_to` (the notebooks' directory) if given."""
    work = Path(work)
    props = quokka_proposals(work / "quokka_proposals.json")
    manual = work / "shapesref_manual"
    if not manual.exists():
        small_shapesref(manual)

    def p(x: Path) -> str:
        if relative_to is None:
            return str(Path(x).resolve())
        import os

        return os.path.relpath(Path(x).resolve(), Path(relative_to).resolve())

    weights = p(ROOT / "weights" / "shapesref-itm")
    return {
        "quickstart": {"WEIGHTS": weights},
        "segment_your_image": {
            "BLIP": weights, "PROPOSER": None, "PROPOSALS_FILE": p(props),
            "IMAGE": p(QUOKKA), "EXPRESSIONS": QUOKKA_EXPRESSIONS},
        "evaluate_refcoco": {
            "DATASET": "shapesref", "SPLIT": "val", "MANUAL_DIR": p(manual),
            "DATA_DIR": p(work / "tfds"), "WEIGHTS": weights, "PROPOSALS": "gt",
            "PROPOSER": None, "OUT": p(work / "eval_out"), "GALLERY": 4},
    }


def store_outputs(names: list[str] | None = None) -> None:
    """Execute the notebooks in place on the fixtures (written under data/notebook_fixtures,
    paths relative to notebooks/), so the committed files carry the outputs of a real run."""
    import os

    import nbformat
    import papermill

    nbdir = ROOT / "notebooks"
    params = notebook_parameters(ROOT / "data" / "notebook_fixtures", relative_to=nbdir)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in names or list(params):
        path = nbdir / f"{name}.ipynb"
        papermill.execute_notebook(str(path), str(path), parameters=params[name],
                                   cwd=str(nbdir), kernel_name="python3", progress_bar=False)
        nb = nbformat.read(path, as_version=4)
        nb.metadata["papermill"]["input_path"] = nb.metadata["papermill"]["output_path"] = \
            path.name  # no machine paths in the committed file
        nb.cells = [c for c in nb.cells  # the fixture values stay out of the committed file
                    if "injected-parameters" not in c.metadata.get("tags", [])]
        nbformat.write(nb, path)


if __name__ == "__main__":
    # python -m tests.notebook_fixtures --store [NAME ...]: execute the notebooks in place
    # python -m tests.notebook_fixtures DIR: write the fixtures to DIR, print the parameters
    if sys.argv[1:2] == ["--store"]:
        store_outputs(sys.argv[2:])
    else:
        print(json.dumps(notebook_parameters(Path(sys.argv[1])), indent=2))
