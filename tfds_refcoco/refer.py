"""Plain-python reading and validation of the "refer" layout (lichengunc/refer).

Usable without TFDS. A dataset in refer layout is a directory ``<manual_dir>/<dataset>/`` holding
``refs(<partition>).p`` (a pickled list of refs) and ``instances.json`` (COCO-style images,
annotations, categories), plus a directory of images named by ``images[i]["file_name"]``.

Every problem with the files raises :class:`ReferFormatError` (a ``ValueError``) whose message
names the offending file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Official split names, in the order splits are emitted.
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB", "test")


class ReferFormatError(ValueError):
    """A file of the refer layout is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ReferLayout:
    """Where one dataset lives, relative to the manual directory.

    Attributes:
      dataset_dir: directory holding the refs pickle and instances.json (e.g. "refcoco").
      refs_name: refs pickle file name (e.g. "refs(unc).p").
      image_dir: directory of the images (e.g. "train2014" or "shapesref/images").
    """

    dataset_dir: str
    refs_name: str
    image_dir: str

    def refs_path(self, root: str | Path) -> Path:
        return Path(root) / self.dataset_dir / self.refs_name

    def instances_path(self, root: str | Path) -> Path:
        return Path(root) / self.dataset_dir / "instances.json"

    def image_root(self, root: str | Path) -> Path:
        return Path(root) / self.image_dir


LAYOUTS: dict[str, ReferLayout] = {
    "refcoco_unc": ReferLayout("refcoco", "refs(unc).p", "train2014"),
    "refcoco_plus_unc": ReferLayout("refcoco+", "refs(unc).p", "train2014"),
    "refcocog_umd": ReferLayout("refcocog", "refs(umd).p", "train2014"),
    "refcocog_google": ReferLayout("refcocog", "refs(google).p", "train2014"),
    "shapesref": ReferLayout("shapesref", "refs(unc).p", "shapesref/images"),
}

_ALIASES = {"refcoco+_unc": "refcoco_plus_unc", "refcocoplus_unc": "refcoco_plus_unc"}


# Every config of the ``ref_coco_masks`` builder: the refer-layout ones and PhraseCut.
CONFIG_NAMES: tuple[str, ...] = (*LAYOUTS, "phrasecut")


def canonical_config_name(name: str) -> str:
    """Maps a config name or alias (``refcoco+_unc``) to its TFDS-valid name."""
    canonical = _ALIASES.get(name, name)
    if canonical not in CONFIG_NAMES:
        raise ValueError(f"unknown refer config {name!r}; known: {sorted(CONFIG_NAMES)}")
    return canonical


@dataclasses.dataclass(frozen=True)
class ReferData:
    """One dataset's annotations, indexed.

    Attributes:
      refs: the refs as stored in the pickle (dicts with ref_id, ann_id, image_id, split,
        category_id, sentences, ...).
      images: image_id -> COCO image dict (file_name, height, width, ...).
      anns: ann_id -> COCO annotation dict (segmentation, bbox, category_id, image_id, ...).
      anns_by_image: image_id -> ann_ids of that image, sorted.
      refs_path / instances_path: the files they came from (for error messages).
    """

    refs: list[dict[str, Any]]
    images: dict[int, dict[str, Any]]
    anns: dict[int, dict[str, Any]]
    anns_by_image: dict[int, list[int]]
    refs_path: Path
    instances_path: Path

    def splits(self) -> list[str]:
        """Official splits present in the refs, in :data:`SPLITS` order."""
        present = {r["split"] for r in self.refs}
        return [s for s in SPLITS if s in present]

    def split_refs(self, split: str) -> list[dict[str, Any]]:
        """Refs of one split sorted by (image_id, ref_id): one image's refs are consecutive."""
        chosen = [r for r in self.refs if r["split"] == split]
        return sorted(chosen, key=lambda r: (int(r["image_id"]), int(r["ref_id"])))


def _decode_bytes(obj: Any) -> Any:
    """Recursively turns bytes (from a python-2 pickle loaded with encoding="bytes") into str."""
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return obj.decode("latin-1")
    if isinstance(obj, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_decode_bytes(v) for v in obj)
    return obj


_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
_SENT_KEYS = ("sent_id", "sent")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """Loads and checks a refs pickle (a list of ref dicts, python-2 pickles included)."""
    path = Path(path)
    if not path.is_file():
        raise ReferFormatError(f"refs pickle not found: {path}")
    try:
        data = path.read_bytes()
        try:
            refs = pickle.loads(data)
        except UnicodeDecodeError:
            refs = _decode_bytes(pickle.loads(data, encoding="bytes"))
    except ReferFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a format error
        raise ReferFormatError(f"cannot unpickle refs file {path}: {e!r}") from e
    if not isinstance(refs, list):
        raise ReferFormatError(f"refs file {path} must hold a list, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        missing = [k for k in _REF_KEYS if not isinstance(ref, dict) or k not in ref]
        if missing:
            raise ReferFormatError(f"refs file {path}: ref #{i} lacks keys {missing}")
        for sent in ref["sentences"]:
            if not isinstance(sent, dict) or any(k not in sent for k in _SENT_KEYS):
                raise ReferFormatError(
                    f"refs file {path}: ref_id {ref['ref_id']} has a sentence without "
                    f"{list(_SENT_KEYS)}"
                )
    return refs


def load_instances(path: str | Path) -> dict[str, Any]:
    """Loads and checks instances.json (keys images, annotations; categories optional)."""
    path = Path(path)
    if not path.is_file():
        raise ReferFormatError(f"instances file not found: {path}")
    try:
        with path.open("rb") as f:
            inst = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReferFormatError(f"malformed JSON in {path}: {e}") from e
    if not isinstance(inst, dict) or any(k not in inst for k in ("images", "annotations")):
        raise ReferFormatError(f"{path} must be a JSON object with 'images' and 'annotations'")
    for img in inst["images"]:
        if any(k not in img for k in ("id", "file_name", "height", "width")):
            raise ReferFormatError(f"{path}: an image lacks id/file_name/height/width: {img}")
    for ann in inst["annotations"]:
        if any(k not in ann for k in ("id", "image_id", "segmentation", "bbox")):
            raise ReferFormatError(
                f"{path}: annotation {ann.get('id')} lacks id/image_id/segmentation/bbox"
            )
    return inst


def load_refer(root: str | Path, layout: ReferLayout) -> ReferData:
    """Loads one dataset of the refer layout and checks that refs point at known anns/images."""
    refs_path, inst_path = layout.refs_path(root), layout.instances_path(root)
    refs = load_refs(refs_path)
    inst = load_instances(inst_path)
    images = {int(im["id"]): im for im in inst["images"]}
    anns = {int(a["id"]): a for a in inst["annotations"]}
    anns_by_image: dict[int, list[int]] = {}
    for ann_id, ann in sorted(anns.items()):
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ReferFormatError(
                f"{inst_path}: annotation {ann_id} refers to unknown image_id {image_id}"
            )
        anns_by_image.setdefault(image_id, []).append(ann_id)
    for ref in refs:
        ann_id, image_id = int(ref["ann_id"]), int(ref["image_id"])
        if ann_id not in anns:
            raise ReferFormatError(
                f"{refs_path}: ref_id {ref['ref_id']} refers to ann_id {ann_id}, "
                f"which is not in {inst_path}"
            )
        if image_id not in images:
            raise ReferFormatError(
                f"{refs_path}: ref_id {ref['ref_id']} refers to image_id {image_id}, "
                f"which is not in {inst_path}"
            )
        if int(anns[ann_id]["image_id"]) != image_id:
            raise ReferFormatError(
                f"{refs_path}: ref_id {ref['ref_id']} has image_id {image_id} but its "
                f"ann_id {ann_id} belongs to image {anns[ann_id]['image_id']} in {inst_path}"
            )
    return ReferData(refs, images, anns, anns_by_image, refs_path, inst_path)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterises a COCO segmentation (polygons, RLE or compressed RLE) to an (H, W) uint8 mask.

    Follows ``pycocotools.coco.COCO.annToMask``.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():  # pycocotools vs numpy 2 "copy keyword" deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation has size {mask.shape}, image is {(height, width)}")
    return np.ascontiguousarray(mask, dtype=np.uint8)


def ann_mask(data: ReferData, ann_id: int) -> np.ndarray:
    """The (H, W) uint8 mask of one annotation, at its image's size."""
    ann = data.anns[ann_id]
    img = data.images[int(ann["image_id"])]
    try:
        return decode_segmentation(ann["segmentation"], int(img["height"]), int(img["width"]))
    except Exception as e:  # noqa: BLE001
        raise ReferFormatError(
            f"{data.instances_path}: cannot rasterise annotation {ann_id}: {e}"
        ) from e


def read_image_bytes(path: str | Path, expect_hw: tuple[int, int] | None = None) -> bytes:
    """Reads an encoded image and checks it decodes (and has size ``expect_hw`` if given).

    Returns the encoded bytes unchanged for RGB or grayscale images; other modes (CMYK, RGBA,
    palette) are converted to RGB and re-encoded as PNG, so readers always get 1 or 3 channels.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ReferFormatError(f"image file not found: {path}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if expect_hw is not None and (im.height, im.width) != tuple(expect_hw):
                raise ReferFormatError(
                    f"image {path} is {im.height}x{im.width}, instances.json says "
                    f"{expect_hw[0]}x{expect_hw[1]}"
                )
            if im.mode not in ("RGB", "L"):
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
                data = buf.getvalue()
    except ReferFormatError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ReferFormatError(f"cannot read image file {path}: {e}") from e
    return data


def _sentences(ref: dict[str, Any]) -> tuple[list[str], list[int]]:
    sents = ref["sentences"]
    return [str(s["sent"]) for s in sents], [int(s["sent_id"]) for s in sents]


def iter_examples(
    root: str | Path, layout: ReferLayout, data: ReferData, split: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(key, example)`` for one split, one example per ref, ordered by (image, ref).

    ``example["image"]`` holds encoded image bytes; masks are (H, W) uint8, proposals
    (N, H, W) uint8 = every instance annotation of the image, ordered by ann_id. Image reading
    and proposal rasterisation are done once per image.
    """
    cache_id: int | None = None
    image_bytes, proposals, proposal_ids, proposal_cats, file_name = b"", None, None, None, ""
    for key, ref in enumerate(data.split_refs(split)):
        image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
        if image_id != cache_id:
            img = data.images[image_id]
            file_name = str(img["file_name"])
            hw = (int(img["height"]), int(img["width"]))
            image_bytes = read_image_bytes(layout.image_root(root) / file_name, hw)
            proposal_ids = np.asarray(data.anns_by_image.get(image_id, []), dtype=np.int64)
            masks = [ann_mask(data, int(a)) for a in proposal_ids]
            proposals = np.stack(masks) if masks else np.zeros((0, *hw), np.uint8)
            proposal_cats = np.asarray(
                [int(data.anns[int(a)].get("category_id", -1)) for a in proposal_ids], np.int64
            )
            cache_id = image_id
        assert proposals is not None and proposal_ids is not None
        sentences, sent_ids = _sentences(ref)
        ann = data.anns[ann_id]
        yield (
            key,
            {
                "image": image_bytes,
                "file_name": file_name,
                "image_id": image_id,
                "ref_id": int(ref["ref_id"]),
                "ann_id": ann_id,
                "category_id": int(ref.get("category_id", ann.get("category_id", -1))),
                "box": np.asarray(ann["bbox"], dtype=np.float32).reshape(4),
                "sentences": sentences,
                "sent_ids": np.asarray(sent_ids, dtype=np.int64),
                "mask": proposals[int(np.flatnonzero(proposal_ids == ann_id)[0])],
                "proposals": proposals,
                "proposal_ann_ids": proposal_ids,
                "proposal_category_ids": proposal_cats,
            },
        )
