"""Plain-python reading, validation and rasterisation of VGPhraseCut v0 in its official layout.

Usable without TFDS. The dataset directory (``<manual_dir>/VGPhraseCut_v0/``, or ``manual_dir``
itself when it holds ``image_data_split.json``) contains, as released by the authors
(ChenyunWu/PhraseCutDataset)::

    image_data_split.json        [{"image_id", "width", "height", "split", "coco_id", ...}, ...]
    refer_{train,val,test,miniv}.json   one list of tasks per split (any subset of the four)
    images/<image_id>.jpg        Visual Genome images

A task is one phrase-region pair: ``task_id``, ``image_id``, ``ann_ids``, ``instance_boxes``
(xywh per instance), ``Polygons`` (per instance a list of polygons, each a list of [x, y]
points), ``phrase`` and ``phrase_structure`` (``name``, ``attributes``, ``relation_ids``,
``relation_descriptions`` as [predicate, object] pairs, ``type``).

The ground-truth mask of a task follows the official code (``utils/data_transfer.py``
``polygons_to_mask`` as used by ``utils/iou.py`` / ``utils/evaluator.py``): the union of every
polygon of every instance, each polygon with at least 2 points filled with PIL
``ImageDraw.polygon`` on its points truncated with ``int()``, ``outline=1, fill=1``.

Every problem with the files raises :class:`PhraseCutFormatError` (a ``ValueError``) whose
message names the file and, for a task, its ``task_id``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tfds_refcoco.refer import ReferFormatError, read_image_bytes

SPLITS: tuple[str, ...] = ("train", "val", "test", "miniv")
DATASET_DIR = "VGPhraseCut_v0"
IMAGE_INFO = "image_data_split.json"
IMAGE_DIR = "images"
PHRASE_TYPES: tuple[str, ...] = ("name", "attribute", "relation", "verbose")
_TASK_KEYS = ("task_id", "image_id", "instance_boxes", "Polygons", "phrase", "phrase_structure")
_STRUCT_KEYS = ("name", "attributes", "type")


class PhraseCutFormatError(ReferFormatError):
    """A VGPhraseCut file is missing, unreadable or inconsistent (names the file / task)."""


def refer_file(split: str) -> str:
    return f"refer_{split}.json"


def resolve_root(manual_dir: str | Path) -> Path:
    """``manual_dir/VGPhraseCut_v0`` if it exists, else ``manual_dir`` itself."""
    manual_dir = Path(manual_dir).expanduser()
    sub = manual_dir / DATASET_DIR
    return sub if sub.is_dir() else manual_dir


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise PhraseCutFormatError(f"PhraseCut file not found: {path}")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PhraseCutFormatError(f"malformed JSON in {path}: {e}") from e


def load_image_info(path: str | Path) -> dict[int, dict[str, Any]]:
    """image_data_split.json -> {image_id: {"width", "height", "split", ...}}."""
    path = Path(path)
    items = _load_json(path)
    if not isinstance(items, list):
        raise PhraseCutFormatError(f"{path} must hold a JSON list of images")
    out: dict[int, dict[str, Any]] = {}
    for k, img in enumerate(items):
        if not isinstance(img, dict) or any(x not in img for x in
                                            ("image_id", "width", "height", "split")):
            raise PhraseCutFormatError(
                f"{path}: image entry #{k} lacks image_id/width/height/split")
        image_id = int(img["image_id"])
        if image_id in out:
            raise PhraseCutFormatError(f"{path}: image_id {image_id} is listed twice")
        out[image_id] = img
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_task(task: Any, k: int, path: Path) -> None:
    """Structure of one task (keys and nesting); raises naming the task."""
    if not isinstance(task, dict):
        raise PhraseCutFormatError(f"{path}: task #{k} is not a JSON object")
    name = f"{path}: task {task.get('task_id', f'#{k}')!r}"
    missing = [x for x in _TASK_KEYS if x not in task]
    if missing:
        raise PhraseCutFormatError(f"{name} lacks {missing}")
    boxes, polys = task["instance_boxes"], task["Polygons"]
    if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(map(_is_number, b)) for b in boxes):
        raise PhraseCutFormatError(f"{name}: instance_boxes must be a list of [x, y, w, h]")
    if not isinstance(polys, list) or len(polys) != len(boxes):
        raise PhraseCutFormatError(
            f"{name}: Polygons must be a list with one entry per instance box "
            f"({len(boxes)} boxes)")
    for inst in polys:
        if not isinstance(inst, list):
            raise PhraseCutFormatError(f"{name}: an instance's polygons must be a list")
        for poly in inst:
            if not isinstance(poly, list) or not all(
                    isinstance(p, list | tuple) and len(p) == 2 and all(map(_is_number, p))
                    for p in poly):
                raise PhraseCutFormatError(
                    f"{name}: a polygon must be a list of [x, y] points, got {poly!r:.80}")
    if not isinstance(task["phrase"], str) or not task["phrase"].strip():
        raise PhraseCutFormatError(f"{name} has an empty phrase {task['phrase']!r}")
    ps = task["phrase_structure"]
    if not isinstance(ps, dict) or any(x not in ps for x in _STRUCT_KEYS):
        raise PhraseCutFormatError(f"{name}: phrase_structure must hold {list(_STRUCT_KEYS)}")
    if not isinstance(ps["attributes"], list):
        raise PhraseCutFormatError(f"{name}: phrase_structure.attributes must be a list")
    for rel in ps.get("relation_descriptions") or []:
        if not isinstance(rel, list | tuple) or len(rel) != 2:
            raise PhraseCutFormatError(
                f"{name}: a relation description must be a [predicate, object] pair")


def load_tasks(path: str | Path) -> list[dict[str, Any]]:
    """One ``refer_<split>.json``: its tasks, checked (file order kept)."""
    path = Path(path)
    tasks = _load_json(path)
    if not isinstance(tasks, list):
        raise PhraseCutFormatError(f"{path} must hold a JSON list of tasks")
    seen: set[str] = set()
    for k, task in enumerate(tasks):
        _check_task(task, k, path)
        tid = str(task["task_id"])
        if tid in seen:
            raise PhraseCutFormatError(f"{path}: task_id {tid!r} appears twice")
        seen.add(tid)
    return tasks


@dataclasses.dataclass(frozen=True)
class PhraseCutData:
    """The splits present in a VGPhraseCut directory, checked.

    Attributes:
      root: the dataset directory.
      images: image_id -> image_data_split.json entry.
      tasks: split -> its tasks ordered by image_id (file order within an image), so one
        image's tasks are consecutive.
    """

    root: Path
    images: dict[int, dict[str, Any]]
    tasks: dict[str, list[dict[str, Any]]]

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.tasks]

    def image_path(self, image_id: int) -> Path:
        return self.root / IMAGE_DIR / f"{image_id}.jpg"


def load_phrasecut(manual_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> PhraseCutData:
    """Reads image_data_split.json and every ``refer_<split>.json`` present.

    Raises PhraseCutFormatError when no refer file is present, a task's image is not in
    image_data_split.json or belongs to another split there, or an image has tasks in two
    splits' files.
    """
    root = resolve_root(manual_dir)
    present = [s for s in splits if (root / refer_file(s)).is_file()]
    if not present:
        raise PhraseCutFormatError(
            f"no PhraseCut refer file ({', '.join(refer_file(s) for s in splits)}) in {root}")
    info_path = root / IMAGE_INFO
    images = load_image_info(info_path)
    tasks: dict[str, list[dict[str, Any]]] = {}
    owner: dict[int, tuple[str, str]] = {}  # image_id -> (split, first task_id)
    for split in present:
        path = root / refer_file(split)
        loaded = load_tasks(path)
        for task in loaded:
            image_id, tid = int(task["image_id"]), str(task["task_id"])
            if image_id not in images:
                raise PhraseCutFormatError(
                    f"{path}: task {tid!r} refers to image_id {image_id}, which is not in "
                    f"{info_path}")
            prev = owner.setdefault(image_id, (split, tid))
            if prev[0] != split:
                raise PhraseCutFormatError(
                    f"image {image_id} is in two splits: task {prev[1]!r} in "
                    f"{refer_file(prev[0])} and task {tid!r} in {refer_file(split)} ({root})")
            listed = images[image_id]["split"]
            if listed != split:
                raise PhraseCutFormatError(
                    f"{path}: task {tid!r} is on image {image_id}, which {info_path} puts in "
                    f"split {listed!r}")
        order = sorted(range(len(loaded)), key=lambda i: (int(loaded[i]["image_id"]), i))
        tasks[split] = [loaded[i] for i in order]
    return PhraseCutData(root, images, tasks)


def polygons_to_mask(polygons: list[list[Any]], height: int, width: int) -> np.ndarray:
    """The official rasterisation: union of PIL-filled polygons, points truncated by ``int``.

    Args:
      polygons: polygons, each a list of [x, y] points (fractional allowed); polygons with
        fewer than 2 points are skipped, as in the official code.
      height, width: mask size.
    Returns:
      (height, width) uint8 mask in {0, 1}.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 2:
            continue
        # Drawing only ever writes 1, so one canvas gives the union of per-polygon canvases.
        draw.polygon([(int(x), int(y)) for x, y in poly], outline=1, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def task_mask(task: dict[str, Any], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 ground truth of a task: every polygon of every instance."""
    return polygons_to_mask([p for inst in task["Polygons"] for p in inst], height, width)


def _structure(task: dict[str, Any]) -> dict[str, Any]:
    ps = task["phrase_structure"]
    rels = ps.get("relation_descriptions") or []
    return {
        "name": str(ps["name"]),
        "attributes": [str(a) for a in ps["attributes"]],
        "relation_predicates": [str(r[0]) for r in rels],
        "relation_objects": [str(r[1]) for r in rels],
        "relation_ids": np.asarray(ps.get("relation_ids") or [], np.int64).reshape(-1),
        "phrase_type": str(ps["type"]),
    }


def iter_examples(data: PhraseCutData, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(key, example)`` for one split: one example per task, ordered by image.

    ``example["image"]`` holds the encoded image bytes (read once per image);
    ``example["mask"]`` the (H, W) uint8 ground truth; ``task_index`` the position in the
    split (the key).
    """
    path = data.root / refer_file(split)
    cache_id: int | None = None
    image_bytes = b""
    for key, task in enumerate(data.tasks[split]):
        image_id, tid = int(task["image_id"]), str(task["task_id"])
        img = data.images[image_id]
        hw = (int(img["height"]), int(img["width"]))
        if image_id != cache_id:
            try:
                image_bytes = read_image_bytes(data.image_path(image_id), hw)
            except ReferFormatError as e:
                raise PhraseCutFormatError(f"{path}: task {tid!r}: {e}") from None
            cache_id = image_id
        mask = task_mask(task, *hw)
        yield key, {
            "image": image_bytes,
            "file_name": f"{image_id}.jpg",
            "image_id": image_id,
            "task_id": tid,
            "task_index": key,
            "phrase": str(task["phrase"]),
            **_structure(task),
            "ann_ids": np.asarray(task.get("ann_ids") or [], np.int64).reshape(-1),
            "instance_boxes": np.asarray(task["instance_boxes"], np.float32).reshape(-1, 4),
            "mask": mask,
            "mask_area": int(np.count_nonzero(mask)),
        }
