"""PhraseCut in the evaluation driver: task fields, the "unseen" filter, official subsets.

A PhraseCut task (one phrase, ``tfds_refcoco`` config ``phrasecut``) is evaluated as a ref with
one sentence: ``ref_id`` = the task's position in the split (``task_index``), ``sent_id`` = 0,
``ann_id`` = -1. Its sample record adds ``task_id``, ``category`` (``phrase_structure.name``),
``instances`` (number of referred instances), ``gt_pixels`` (area of the official ground truth)
and ``image_pixels`` (H * W): what the official subsets (`iterprime_jax.metrics.
phrasecut_subsets`) are computed from.

``--unseen`` follows Global-Local CLIP's PhraseCut loader (its ``unseen_mode``): a task is
dropped when its category name is one of the 80 COCO classes; an image left without tasks is
dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import is_coco_category, phrasecut_subsets, summarize_subsets

TASK_FIELDS: tuple[str, ...] = ("task_id", "category", "instances", "gt_pixels", "image_pixels")


def as_text(v: Any) -> str:
    """A TFDS text feature (bytes from a data source, or str) as str."""
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def task_fields(example: Mapping[str, Any], hw: tuple[int, int]) -> tuple[tuple[str, Any], ...]:
    """The extra sample-record fields of a PhraseCut example (see the module docstring)."""
    return (
        ("task_id", as_text(example["task_id"])),
        ("category", as_text(example["name"])),
        ("instances", int(np.asarray(example["instance_boxes"]).reshape(-1, 4).shape[0])),
        ("gt_pixels", int(example["mask_area"])),
        ("image_pixels", int(hw[0]) * int(hw[1])),
    )


def check_files(manual_dir: str | Path) -> None:
    """Fail naming the file when the PhraseCut sources are absent (before TFDS's own check)."""
    from tfds_refcoco.phrasecut import IMAGE_INFO, PhraseCutFormatError, resolve_root

    root = resolve_root(manual_dir)
    if not (root / IMAGE_INFO).is_file():
        raise PhraseCutFormatError(
            f"PhraseCut file not found: {root / IMAGE_INFO} (put VGPhraseCut_v0 in "
            f"{manual_dir}; see tfds_refcoco/README.md)")


def drop_seen(images: Sequence[Any]) -> list[Any]:
    """Images (``ImageMeta``) keeping only tasks whose category is not a COCO class; images
    left empty are dropped and positions renumbered."""
    out = []
    for meta in images:
        refs = tuple(r for r in meta.refs if not is_coco_category(dict(r.extra)["category"]))
        if refs:
            out.append(dataclasses.replace(meta, position=len(out), refs=refs))
    return out


def record_subsets(rec: Mapping[str, Any]) -> tuple[str, ...]:
    return phrasecut_subsets(str(rec["category"]), int(rec["instances"]),
                             int(rec["gt_pixels"]), int(rec["image_pixels"]))


def subset_metrics(recs: Iterable[Mapping[str, Any]], convention: str
                   ) -> dict[str, dict[str, float | int]]:
    """``{subset: summarize(...)}`` over sample records (official subsets, int64 counts)."""
    recs = list(recs)
    i = np.asarray([int(r["I"]) for r in recs], np.int64)
    u = np.asarray([int(r["U"]) for r in recs], np.int64)
    return summarize_subsets(i, u, [record_subsets(r) for r in recs],
                             convention=convention)  # type: ignore[arg-type]
