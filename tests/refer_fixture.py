"""Writes a tiny dataset in the refer layout (lichengunc/refer) for tests.

``write_refer_fixture(root)`` creates ``root/<dataset>/<refs_name>``, ``root/<dataset>/
instances.json`` and 4 small JPEGs in ``root/<image_dir>/``, and returns what a reader should
find, so tests can compare field by field. Segmentations mix polygons, compressed RLE (counts as
str) and one uncompressed RLE; expected masks are decoded with pycocotools directly.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 40, 56
IMAGE_IDS = (9, 25, 30, 42)
GRAY_IMAGE_ID = 42
# (image_id, ann_id, category_id, kind) with kind in polygon / rle / rle_raw
_ANNS = (
    (9, 101, 1, "polygon"),
    (9, 102, 18, "rle"),
    (9, 103, 3, "polygon"),
    (25, 201, 1, "rle"),
    (25, 202, 62, "polygon"),
    (30, 301, 3, "polygon"),
    (30, 302, 1, "rle"),
    (30, 303, 44, "rle_raw"),
    (42, 401, 18, "polygon"),
    (42, 402, 18, "rle"),
)
# (ref_id, ann_id, split), listed out of order on purpose
_REFS = (
    (7, 401, "testB"),
    (0, 101, "train"),
    (5, 201, "val"),
    (3, 301, "val"),
    (1, 102, "train"),
    (4, 202, "val"),
    (6, 302, "testA"),
    (8, 402, "testB"),
)
_WORDS = ("red", "blue", "left", "right", "big", "small", "top", "café", "green", "one")


def pycoco_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Independent rasterisation with pycocotools (what the builder must reproduce)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return np.asarray(mask_utils.decode(rle), dtype=np.uint8)


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.flatten(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def _segmentation(kind: str, rng: np.random.Generator) -> dict[str, Any] | list[list[float]]:
    """A random shape: a quadrilateral polygon or an ellipse/rectangle stored as RLE."""
    x0, y0 = rng.uniform(2, W / 2), rng.uniform(2, H / 2)
    w, h = rng.uniform(8, W / 2 - 2), rng.uniform(6, H / 2 - 2)
    if kind == "polygon":
        dx = rng.uniform(-2, 2)
        poly = [x0, y0, x0 + w, y0 + dx, x0 + w + dx, y0 + h, x0, y0 + h - dx]
        return [[round(float(v), 2) for v in poly]]
    yy, xx = np.mgrid[:H, :W]
    if kind == "rle":
        cx, cy = x0 + w / 2, y0 + h / 2
        mask = (((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    mask = ((xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)).astype(np.uint8)
    return _uncompressed_rle(mask)


def _sentence(sent_id: int, rng: np.random.Generator) -> dict[str, Any]:
    tokens = [str(t) for t in rng.choice(_WORDS, size=int(rng.integers(2, 5)), replace=False)]
    sent = " ".join(tokens)
    return {"tokens": tokens, "raw": sent.capitalize() + ".", "sent_id": sent_id, "sent": sent}


def _file_name(image_dir: str, image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg" if "2014" in image_dir else f"{image_id:06d}.jpg"


def write_refer_fixture(
    root: Path,
    dataset: str = "refcoco",
    refs_name: str = "refs(unc).p",
    image_dir: str = "train2014",
    seed: int = 0,
) -> dict[str, Any]:
    """Writes the fixture under ``root`` and returns the expected content.

    Returns a dict with
      root, refs_path, instances_path, image_root: Paths;
      images: image_id -> {"file_name", "height", "width", "path", "gray"};
      anns: ann_id -> {"image_id", "category_id", "bbox" (4,) float32, "segmentation",
        "mask" (H, W) uint8};
      anns_by_image: image_id -> sorted ann_ids;
      refs: ref dicts as pickled, each with extra "box" (4,) float32, "sent_ids" and
        "sentences_text" (list[str]) and "mask" (H, W) uint8;
      splits: split -> refs of that split sorted by (image_id, ref_id).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    (root / image_dir).mkdir(parents=True, exist_ok=True)

    images: dict[int, dict[str, Any]] = {}
    for image_id in IMAGE_IDS:
        name = _file_name(image_dir, image_id)
        images[image_id] = {
            "file_name": name,
            "height": H,
            "width": W,
            "path": root / image_dir / name,
            "gray": image_id == GRAY_IMAGE_ID,
        }

    anns: dict[int, dict[str, Any]] = {}
    canvases = {i: np.full((H, W, 3), rng.integers(0, 80, 3), np.uint8) for i in IMAGE_IDS}
    for image_id, ann_id, cat, kind in _ANNS:
        seg = _segmentation(kind, rng)
        mask = pycoco_mask(seg, H, W)
        ys, xs = np.nonzero(mask)
        bbox = np.asarray(
            [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float32
        )
        canvases[image_id][mask.astype(bool)] = rng.integers(100, 256, 3)
        anns[ann_id] = {
            "image_id": image_id,
            "category_id": cat,
            "bbox": bbox,
            "segmentation": seg,
            "mask": mask,
            "iscrowd": int(kind == "rle_raw"),
        }
    for image_id, canvas in canvases.items():
        im = Image.fromarray(canvas)
        if image_id == GRAY_IMAGE_ID:  # COCO has some grayscale JPEGs
            im = im.convert("L")
        im.save(images[image_id]["path"], format="JPEG", quality=90)

    instances = {
        "info": {"description": "refer fixture"},
        "images": [
            {"id": i, "file_name": v["file_name"], "height": H, "width": W}
            for i, v in images.items()
        ],
        "annotations": [
            {
                "id": a,
                "image_id": v["image_id"],
                "category_id": v["category_id"],
                "segmentation": v["segmentation"],
                "bbox": [float(b) for b in v["bbox"]],
                "area": float(v["mask"].sum()),
                "iscrowd": v["iscrowd"],
            }
            for a, v in anns.items()
        ],
        "categories": [
            {"id": c, "name": f"cat{c}", "supercategory": "thing"}
            for c in sorted({v["category_id"] for v in anns.values()})
        ],
    }
    instances_path = root / dataset / "instances.json"
    instances_path.write_text(json.dumps(instances))

    refs, next_sent = [], 1000
    for ref_id, ann_id, split in _REFS:
        ann = anns[ann_id]
        sents = [_sentence(next_sent + k, rng) for k in range(int(rng.integers(1, 4)))]
        next_sent += len(sents)
        refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": ann["image_id"],
                "split": split,
                "category_id": ann["category_id"],
                "sentences": sents,
                "sent_ids": [s["sent_id"] for s in sents],
                "file_name": images[ann["image_id"]]["file_name"][:-4] + f"_{ann_id}.jpg",
            }
        )
    refs_path = root / dataset / refs_name
    with refs_path.open("wb") as f:
        pickle.dump(refs, f, protocol=2)

    expected_refs = [
        dict(
            r,
            box=anns[r["ann_id"]]["bbox"],
            mask=anns[r["ann_id"]]["mask"],
            sentences_text=[s["sent"] for s in r["sentences"]],
        )
        for r in refs
    ]
    splits: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(expected_refs, key=lambda r: (r["image_id"], r["ref_id"])):
        splits.setdefault(r["split"], []).append(r)
    anns_by_image = {i: sorted(a for a, v in anns.items() if v["image_id"] == i) for i in IMAGE_IDS}
    return {
        "root": root,
        "refs_path": refs_path,
        "instances_path": instances_path,
        "image_root": root / image_dir,
        "images": images,
        "anns": anns,
        "anns_by_image": anns_by_image,
        "refs": expected_refs,
        "splits": splits,
    }


def as_text(v: Any) -> str:
    """A TFDS text feature (bytes or str) as str."""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def prepare_config(name: str, manual_dir: Path, data_dir: Path) -> Any:
    """Build TFDS config `name` of `ref_coco_masks` from `manual_dir` into `data_dir`."""
    import tensorflow_datasets as tfds

    from tfds_refcoco import make_builder

    builder = make_builder(name, data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder
