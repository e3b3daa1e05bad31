"""Writes a tiny VGPhraseCut v0 in the official layout for tests.

``write_phrasecut_fixture(root)`` creates ``root/VGPhraseCut_v0/`` with image_data_split.json,
refer_{val,test,miniv,train}.json and small JPEGs in images/, and returns what a reader should
find. Tasks have 1 to 6 instances, instances 1 to 3 polygons, points with fractional (and
some negative or out-of-image) coordinates, degenerate polygons (1 and 2 points), COCO and
non-COCO category names and every phrase type.

`official_mask` is an independent transcription of the official rule (PhraseCutDataset
``utils/data_transfer.py polygons_to_mask`` as used by ``utils/evaluator.py``): each polygon
with >= 2 points drawn with PIL on its own canvas, points truncated by ``int``, summed, > 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# image_id -> (height, width, split, gray)
IMAGES: dict[int, tuple[int, int, str, bool]] = {
    11: (40, 56, "val", False),
    12: (48, 64, "val", False),
    13: (36, 60, "val", True),
    21: (40, 48, "test", False),
    22: (44, 52, "test", False),
    31: (40, 56, "miniv", False),
    41: (32, 40, "train", False),
    99: (30, 30, "train", False),  # listed in image_data_split.json, no task
}
# (image_id, name, instances, phrase type, relation descriptions); tasks listed per file in
# this order, images interleaved on purpose (the builder groups them by image).
_TASKS = (
    (12, "man", [2, 1], "name", []),
    (11, "sky", [1], "name", []),
    (12, "tree", [1, 1, 3, 2, 1], "attribute", []),
    (11, "car", [3, 1, 1], "relation", [["next to", "tree"]]),
    (13, "dog", [1], "verbose", [["on", "grass"], ["near", "man"]]),
    (12, "shirt", [1, 2], "attribute", []),
    (11, "grass", [1], "name", []),
    (13, "window", [2, 2, 1, 1, 1, 1], "name", []),
    (21, "person", [1, 1], "name", []),
    (22, "building", [2], "attribute", []),
    (21, "sign", [1], "relation", [["on", "pole"]]),
    (31, "bus", [1], "name", []),
    (31, "road", [3, 1, 1, 1, 1], "name", []),
    (41, "giraffe", [1], "name", []),
)
_ATTRS = ("white", "black", "large", "wooden", "striped", "standing")
COCO_NAMES = {"man": False, "sky": False, "tree": False, "car": True, "dog": True,
              "shirt": False, "grass": False, "window": False, "person": True,
              "building": False, "sign": False, "bus": True, "road": False, "giraffe": True}


def official_mask(polygons: list[list[list[float]]], height: int, width: int) -> np.ndarray:
    """The official rule, written independently: one canvas per polygon, summed, > 0."""
    total = np.zeros((height, width))
    for polygon in polygons:
        if len(polygon) < 2:
            continue
        points = [(int(x), int(y)) for x, y in polygon]
        img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(img).polygon(points, outline=1, fill=1)
        total += np.array(img)
    return (total > 0).astype(np.uint8)


def task_official_mask(task: dict[str, Any], height: int, width: int) -> np.ndarray:
    flat: list[list[list[float]]] = []
    for instance in task["Polygons"]:
        flat += instance
    return official_mask(flat, height, width)


def _polygon(rng: np.random.Generator, h: int, w: int, size: str) -> list[list[float]]:
    """A star-shaped polygon around a random centre; some points leave the image."""
    n = 6 if size == "large" else int(rng.integers(3, 7))
    scale = {"small": 2.5, "mid": 7.0, "large": 30.0}[size]
    lo, hi = (0.35, 0.65) if size == "large" else (0.0, 1.0)
    cx, cy = rng.uniform(lo * w, hi * w), rng.uniform(lo * h, hi * h)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.8 if size == "large" else 0.4, 1.0, n) * scale
    pts = [[round(float(cx + r * np.cos(a)), 3), round(float(cy + r * np.sin(a)), 3)]
           for a, r in zip(angles, radii, strict=True)]
    return pts


def _instance(rng: np.random.Generator, h: int, w: int, n_polys: int, size: str
              ) -> tuple[list[list[list[float]]], list[float]]:
    polys = [_polygon(rng, h, w, size) for _ in range(n_polys)]
    xs = [p[0] for poly in polys for p in poly]
    ys = [p[1] for poly in polys for p in poly]
    box = [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]
    return polys, [round(v, 3) for v in box]


def write_phrasecut_fixture(root: Path, seed: int = 0) -> dict[str, Any]:
    """Writes the fixture under ``root`` and returns the expected content.

    Returns a dict with
      root: the manual dir; dataset_dir: root / "VGPhraseCut_v0";
      images: image_id -> {"height", "width", "split", "gray", "path"};
      splits: split -> tasks (as written, plus "mask" (H, W) uint8 by `official_mask`) in
        the order the builder must emit them (by image_id, file order within an image).
    """
    root = Path(root)
    ddir = root / "VGPhraseCut_v0"
    (ddir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: dict[int, dict[str, Any]] = {}
    info = []
    for image_id, (h, w, split, gray) in IMAGES.items():
        path = ddir / "images" / f"{image_id}.jpg"
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(pixels)
        (im.convert("L") if gray else im).save(path, format="JPEG", quality=90)
        images[image_id] = {"height": h, "width": w, "split": split, "gray": gray, "path": path}
        info.append({"image_id": image_id, "coco_id": image_id * 7 if image_id % 2 else None,
                     "flickr_id": None, "width": w, "height": h, "split": split,
                     "url": f"https://example.invalid/{image_id}.jpg"})
    (ddir / "image_data_split.json").write_text(json.dumps(info))

    by_file: dict[str, list[dict[str, Any]]] = {}
    ann = 5000
    for k, (image_id, name, instances, ptype, rels) in enumerate(_TASKS):
        h, w = images[image_id]["height"], images[image_id]["width"]
        size = ("large" if k % 5 == 1 else "small" if k % 5 == 3 else "mid")
        polys, boxes = [], []
        for n_polys in instances:
            p, b = _instance(rng, h, w, n_polys, size)
            polys.append(p)
            boxes.append(b)
        ann_ids = list(range(ann, ann + len(instances)))
        ann += len(instances)
        attrs = [str(a) for a in rng.choice(_ATTRS, size=int(ptype == "attribute") + k % 2,
                                             replace=False)]
        phrase = " ".join([*attrs, name, *(f"{p} {o}" for p, o in rels)])
        by_file.setdefault(images[image_id]["split"], []).append({
            "task_id": f"{image_id}__{'_'.join(map(str, ann_ids))}",
            "image_id": image_id,
            "ann_ids": ann_ids,
            "instance_boxes": boxes,
            "Polygons": polys,
            "phrase": phrase,
            "phrase_structure": {"name": name, "attributes": attrs,
                                 "relation_ids": list(range(900 + k, 900 + k + len(rels))),
                                 "relation_descriptions": rels, "type": ptype},
        })
    # Degenerate polygons the official code skips (1 point) or draws as a line (2 points).
    val = by_file["val"]
    val[1]["Polygons"][0].append([[3.7, 4.2]])
    val[1]["Polygons"][0].append([[1.9, 30.5], [50.2, 33.9]])
    val[3]["Polygons"][1].append([[-3.5, -2.25], [10.75, -1.5], [4.5, 12.99]])
    for split, tasks in by_file.items():
        (ddir / f"refer_{split}.json").write_text(json.dumps(tasks))

    splits = {}
    for split, tasks in by_file.items():
        order = sorted(range(len(tasks)), key=lambda i: (tasks[i]["image_id"], i))
        splits[split] = []
        for i in order:
            t = tasks[i]
            img = images[t["image_id"]]
            splits[split].append(dict(t, mask=task_official_mask(t, img["height"],
                                                                 img["width"])))
    return {"root": root, "dataset_dir": ddir, "images": images, "splits": splits}


def rewrite_tasks(dataset_dir: Path, split: str, edit: Any) -> None:
    """Apply ``edit(tasks)`` (in place) to ``refer_<split>.json``."""
    path = Path(dataset_dir) / f"refer_{split}.json"
    tasks = json.loads(path.read_text())
    edit(tasks)
    path.write_text(json.dumps(tasks))
