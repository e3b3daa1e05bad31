"""Writing ShapesRef in the refer layout (`write_shapesref`), the per-image generator of the
splits (`generate_example`), COCO segmentations of the objects, and the CLI
(`python -m shapesref ROOT ...`)."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iterprime_jax.evaluation.proposals import encode_rle

from .config import (
    DATASET_DIR,
    FORMAT_VERSION,
    IMAGE_DIR,
    INSTANCES_FILE,
    REFS_FILE,
    SHAPE_NAMES,
    SPLIT_KINDS,
    SPLITS,
    STAMP_FILE,
    ShapesRefConfig,
)
from .render import choice, generate_scene, make_ref
from .scene import Ref, Scene, SceneObject

log = logging.getLogger(__name__)


def image_rng(config: ShapesRefConfig, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (independent of the other splits' sizes)."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


def generate_example(config: ShapesRefConfig, split: str, index: int) -> tuple[Scene, list[Ref]]:
    """Image ``index`` of ``split`` and its 1-``max_refs_per_image`` refs, as `write_shapesref`
    writes them (each ref on a different object, the designed target first)."""
    rng = image_rng(config, split, index)
    kind = choice(rng, SPLIT_KINDS[split])
    scene = generate_scene(rng, config, kind)
    n_refs = int(rng.integers(1, config.max_refs_per_image + 1))
    others = [scene.targets[1:][i] for i in rng.permutation(len(scene.targets) - 1)]
    targets = [scene.targets[0], *others][:n_refs]
    return scene, [make_ref(scene, t, rng, kind) for t in targets]


def category_id(shape: str) -> int:
    """COCO category id of a shape (fixed across configs)."""
    return SHAPE_NAMES.index(shape) + 1


def segmentation_of(obj: SceneObject) -> list[list[float]] | dict[str, Any]:
    """Polygon for an unoccluded polygonal shape, RLE of the visible mask otherwise."""
    if obj.polygon is not None and not obj.occluded:
        return [list(obj.polygon)]
    return encode_rle(obj.mask)


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Bool mask of a COCO segmentation (polygons, RLE with str, bytes or list counts): the
    refer reader's `tfds_refcoco.refer.decode_segmentation`, as bool."""
    from tfds_refcoco.refer import decode_segmentation as decode

    return decode(seg, height, width).astype(bool)


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _stamp(config: ShapesRefConfig, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config.to_dict()}
    if counts is not None:
        out["counts"] = counts
    return out


def is_complete(dataset_dir: str | Path, config: ShapesRefConfig) -> bool:
    """Whether ``dataset_dir`` holds a finished build of exactly ``config``."""
    d = Path(dataset_dir)
    try:
        stamp = json.loads((d / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("format_version") == FORMAT_VERSION
        and stamp.get("config") == config.to_dict()
        and (d / INSTANCES_FILE).is_file()
        and (d / REFS_FILE).is_file()
    )


def write_shapesref(
    root: str | Path,
    config: ShapesRefConfig = ShapesRefConfig(),  # noqa: B008 (frozen, immutable)
    verbose: bool = False,
) -> Path:
    """Writes ShapesRef in the refer layout under ``root/shapesref`` and returns that directory.

    Idempotent: returns at once if a complete build of the same config is there (the stamp
    ``shapesref_config.json`` is written last). Otherwise rebuilds, removing stale
    ``shapesref_*.png`` images. Image ids, annotation ids, ref ids and sentence ids count from 1
    across the splits in `SPLITS` order. `verbose`: log the time and counts at INFO
    (`python -m shapesref` shows them).
    """
    out_dir = Path(root) / DATASET_DIR
    if is_complete(out_dir, config):
        return out_dir
    start = time.perf_counter()
    img_dir = out_dir / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_FILE).unlink(missing_ok=True)
    tables = _Tables()
    counts = {split: _write_split(config, split, img_dir, tables) for split in SPLITS}
    _write_atomic(out_dir / INSTANCES_FILE,
                  json.dumps(_instances(config, tables), separators=(",", ":")).encode())
    _write_atomic(out_dir / REFS_FILE, pickle.dumps(tables.refs, protocol=2))
    for stale in img_dir.glob("shapesref_*.png"):
        if stale.name not in tables.written:
            stale.unlink()
    _write_atomic(out_dir / STAMP_FILE, json.dumps(_stamp(config, counts), indent=1).encode())
    if verbose:
        log.info("ShapesRef: wrote %s in %.1fs: %s", out_dir, time.perf_counter() - start,
                 counts)
    return out_dir


@dataclass
class _Tables:
    """The refer-layout tables as they grow (ids count from 1 across the splits)."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    written: set[str] = field(default_factory=set)  # image file names of this build


def _write_split(config: ShapesRefConfig, split: str, img_dir: Path, tables: _Tables
                 ) -> dict[str, int]:
    """Generates and writes the images of `split`, appending to `tables`; its counts."""
    n_refs = n_sents = 0
    for index in range(config.num_images[split]):
        scene, scene_refs = generate_example(config, split, index)
        image_id = len(tables.images) + 1
        file_name = f"shapesref_{image_id:06d}.png"
        h, w = scene.image.shape[:2]
        tables.images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        _write_png(img_dir / file_name, scene.image)
        tables.written.add(file_name)
        ann_ids = []
        for obj in scene.objects:
            ann_ids.append(len(tables.annotations) + 1)
            tables.annotations.append(_annotation(obj, ann_ids[-1], image_id, file_name))
        for ref in scene_refs:
            tables.refs.append(_ref_record(ref, scene, len(tables.refs) + 1, _next_sent_id(
                tables.refs), ann_ids[ref.target], image_id, split, file_name))
            n_refs += 1
            n_sents += len(ref.sentences)
    return {"images": config.num_images[split], "refs": n_refs, "sentences": n_sents}


def _write_png(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 -> PNG at `path`, unless the same bytes are there."""
    png = _png_bytes(image)
    if not path.is_file() or path.read_bytes() != png:
        _write_atomic(path, png)


def _annotation(obj: SceneObject, ann_id: int, image_id: int, file_name: str
                ) -> dict[str, Any]:
    """The COCO annotation of `obj` (its segmentation checked to decode to its mask)."""
    h, w = obj.mask.shape
    seg = segmentation_of(obj)
    if not np.array_equal(decode_segmentation(seg, h, w), obj.mask):
        raise AssertionError(f"segmentation does not decode to the mask ({file_name})")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id(obj.shape),
        "segmentation": seg,
        "area": float(obj.area),
        "bbox": obj.bbox,
        "iscrowd": 0,
        "attributes": {"colour": obj.colour, "size": obj.size},
    }


def _ref_record(ref: Ref, scene: Scene, ref_id: int, first_sent_id: int, ann_id: int,
                image_id: int, split: str, file_name: str) -> dict[str, Any]:
    """The refs-pickle entry of `ref` (its sentences numbered from `first_sent_id`)."""
    sent_ids = list(range(first_sent_id, first_sent_id + len(ref.sentences)))
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": [
            {"tokens": s.split(), "raw": s, "sent_id": i, "sent": s}
            for i, s in zip(sent_ids, ref.sentences, strict=True)
        ],
        "sent_ids": sent_ids,
        "file_name": file_name,
        "category_id": category_id(scene.objects[ref.target].shape),
        "kind": ref.kind,
    }


def _instances(config: ShapesRefConfig, tables: _Tables) -> dict[str, Any]:
    """The COCO instances file (images, annotations, the config's shape categories)."""
    categories = [
        {"id": category_id(s), "name": s, "supercategory": "shape"}
        for s in SHAPE_NAMES
        if s in config.shapes
    ]
    return {
        "info": {"description": "ShapesRef procedural referring segmentation",
                 "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": tables.images,
        "annotations": tables.annotations,
        "categories": categories,
    }


def _next_sent_id(refs: list[dict[str, Any]]) -> int:
    return refs[-1]["sent_ids"][-1] + 1 if refs else 1


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m shapesref ROOT [--seed N] [--image-size S] [--num-train N] ...``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m shapesref",
                                description="Write the ShapesRef benchmark in the refer layout.")
    p.add_argument("root", help="directory to write shapesref/ into")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=ShapesRefConfig().image_size)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--num-test-a", type=int, default=200)
    p.add_argument("--num-test-b", type=int, default=200)
    a = p.parse_args(argv)
    cfg = ShapesRefConfig(
        image_size=a.image_size,
        num_train=a.num_train,
        num_val=a.num_val,
        num_test_a=a.num_test_a,
        num_test_b=a.num_test_b,
        seed=a.seed,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_shapesref(a.root, cfg, verbose=True)


if __name__ == "__main__":
    main()
