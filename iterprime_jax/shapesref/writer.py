"""Writing ShapesRef in the refer layout (`write_shapesref`), the per-image generator of the
splits (`generate_example`), COCO segmentations of the objects, and the CLI
(`python -m iterprime_jax.shapesref ROOT ...`)."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

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
from .render import _choice, generate_scene, make_ref
from .scene import Ref, Scene, SceneObject


def image_rng(config: ShapesRefConfig, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (independent of the other splits' sizes)."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


def generate_example(config: ShapesRefConfig, split: str, index: int) -> tuple[Scene, list[Ref]]:
    """Image ``index`` of ``split`` and its 1-``max_refs_per_image`` refs, as `write_shapesref`
    writes them (each ref on a different object, the designed target first)."""
    rng = image_rng(config, split, index)
    kind = _choice(rng, SPLIT_KINDS[split])
    scene = generate_scene(rng, config, kind)
    n_refs = int(rng.integers(1, config.max_refs_per_image + 1))
    others = [scene.targets[1:][i] for i in rng.permutation(len(scene.targets) - 1)]
    targets = [scene.targets[0], *others][:n_refs]
    return scene, [make_ref(scene, t, rng, kind) for t in targets]


def category_id(shape: str) -> int:
    """COCO category id of a shape (fixed across configs)."""
    return SHAPE_NAMES.index(shape) + 1


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a bool mask with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


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
    across the splits in `SPLITS` order.
    """
    out_dir = Path(root) / DATASET_DIR
    if is_complete(out_dir, config):
        return out_dir
    start = time.perf_counter()
    img_dir = out_dir / IMAGE_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_FILE).unlink(missing_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    counts: dict[str, Any] = {}
    written: set[str] = set()
    for split in SPLITS:
        n_refs = n_sents = 0
        for index in range(config.num_images[split]):
            scene, scene_refs = generate_example(config, split, index)
            image_id = len(images) + 1
            file_name = f"shapesref_{image_id:06d}.png"
            h, w = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            png = _png_bytes(scene.image)
            path = img_dir / file_name
            if not path.is_file() or path.read_bytes() != png:
                _write_atomic(path, png)
            written.add(file_name)
            ann_ids = []
            for obj in scene.objects:
                ann_ids.append(len(annotations) + 1)
                seg = segmentation_of(obj)
                if not np.array_equal(decode_segmentation(seg, h, w), obj.mask):
                    raise AssertionError(f"segmentation does not decode to the mask ({file_name})")
                annotations.append(
                    {
                        "id": ann_ids[-1],
                        "image_id": image_id,
                        "category_id": category_id(obj.shape),
                        "segmentation": seg,
                        "area": float(obj.area),
                        "bbox": obj.bbox,
                        "iscrowd": 0,
                        "attributes": {"colour": obj.colour, "size": obj.size},
                    }
                )
            for ref in scene_refs:
                first = _next_sent_id(refs)
                sent_ids = list(range(first, first + len(ref.sentences)))
                refs.append(
                    {
                        "ref_id": len(refs) + 1,
                        "ann_id": ann_ids[ref.target],
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
                )
                n_refs += 1
                n_sents += len(ref.sentences)
        counts[split] = {"images": config.num_images[split], "refs": n_refs, "sentences": n_sents}
    categories = [
        {"id": category_id(s), "name": s, "supercategory": "shape"}
        for s in SHAPE_NAMES
        if s in config.shapes
    ]
    instances = {
        "info": {"description": "ShapesRef procedural referring segmentation",
                 "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    _write_atomic(out_dir / INSTANCES_FILE, json.dumps(instances, separators=(",", ":")).encode())
    _write_atomic(out_dir / REFS_FILE, pickle.dumps(refs, protocol=2))
    for stale in img_dir.glob("shapesref_*.png"):
        if stale.name not in written:
            stale.unlink()
    _write_atomic(out_dir / STAMP_FILE, json.dumps(_stamp(config, counts), indent=1).encode())
    if verbose:
        print(f"ShapesRef: wrote {out_dir} in {time.perf_counter() - start:.1f}s: {counts}")
    return out_dir


def _next_sent_id(refs: list[dict[str, Any]]) -> int:
    return refs[-1]["sent_ids"][-1] + 1 if refs else 1


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m iterprime_jax.shapesref ROOT [--seed N] [--image-size S] [--num-train N] ...``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m iterprime_jax.shapesref",
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
    write_shapesref(a.root, cfg, verbose=True)


if __name__ == "__main__":
    main()
