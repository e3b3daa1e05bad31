"""A small ShapesRef val split written and built into TFDS once per test module."""

from __future__ import annotations

from pathlib import Path

from iterprime_jax import evaluation as ev
from shapesref import ShapesRefConfig, write_shapesref


def built_shapesref_val(root: Path, num_val: int, seed: int = 5) -> dict[str, Path]:
    """Generate `num_val` val scenes under root/manual and build the TFDS split in root/tfds.
    Returns {"root", "manual", "tfds"}."""
    shapes = ShapesRefConfig(num_train=0, num_val=num_val, num_test_a=0, num_test_b=0, seed=seed)
    write_shapesref(root / "manual", shapes)
    ev.prepare_split(ev.EvalConfig(dataset="shapesref", split="val",
                                   manual_dir=str(root / "manual"), data_dir=str(root / "tfds")))
    return {"root": root, "manual": root / "manual", "tfds": root / "tfds"}
