"""Results per expression kind (ShapesRef's attribute / position / relation) and their chance
level, so that a mIoU means something.

The kind of each ref comes from the refer-layout refs file (``"kind"`` field, written by the
ShapesRef generator); datasets without it (RefCOCO) get no per-kind rows. The chance level of a
sentence is the IoU a uniformly random proposal of the image would get: the mean over the
image's instance masks of their IoU with the referred object (with ShapesRef v2's disjoint
objects, 1 / number of objects). mIoU, oIoU and Prec@0.5 are `iterprime_jax.metrics.summarize`'s,
under the run's metric convention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from iterprime_jax.metrics import Convention, summarize


def ref_kinds(manual_dir: str | Path | None, dataset: str) -> dict[int, str]:
    """{ref_id: kind} from the dataset's refs file; empty if the refs carry no kind (or the
    dataset has no refer layout, e.g. PhraseCut, or there is no `manual_dir`)."""
    if manual_dir is None:
        return {}
    from tfds_refcoco import canonical_config_name
    from tfds_refcoco.refer import LAYOUTS, load_refs

    layout = LAYOUTS.get(canonical_config_name(dataset))
    if layout is None or not Path(layout.refs_path(manual_dir)).is_file():
        return {}
    path = layout.refs_path(manual_dir)
    return {int(r["ref_id"]): str(r["kind"]) for r in load_refs(path) if "kind" in r}


def chance_iou(manual_dir: str | Path, dataset: str, ref_ids: Iterable[int]) -> dict[int, float]:
    """{ref_id: mean IoU of the image's instance masks with the referred object's mask}."""
    from tfds_refcoco import canonical_config_name
    from tfds_refcoco.refer import LAYOUTS, ann_mask, load_refer

    data = load_refer(manual_dir, LAYOUTS[canonical_config_name(dataset)])
    by_id = {int(r["ref_id"]): r for r in data.refs}
    out: dict[int, float] = {}
    for rid in ref_ids:
        ref = by_id[int(rid)]
        target = ann_mask(data, int(ref["ann_id"])).astype(bool)
        ious = []
        for aid in data.anns_by_image[int(ref["image_id"])]:
            m = ann_mask(data, aid).astype(bool)
            union = int((m | target).sum())
            ious.append(int((m & target).sum()) / union if union else 0.0)
        out[int(rid)] = float(np.mean(ious))
    return out


def summarize_by_kind(samples: Iterable[Mapping[str, Any]], chance: Mapping[int, float],
                      convention: Convention = "standard"
                      ) -> dict[str, dict[str, float | int]]:
    """Per kind (and "all"): sentences, mIoU, oIoU, Prec@0.5 (`iterprime_jax.metrics.summarize`
    under `convention`), sentences without candidate and the chance mIoU (`chance_iou` of each
    sentence's ref), all in [0, 1] except counts. Samples need ``kind``, ``I``, ``U``,
    ``has_candidate`` and ``ref_id``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault(str(s["kind"]), []).append(s)
        groups.setdefault("all", []).append(s)
    out: dict[str, dict[str, float | int]] = {}
    for kind in sorted(groups, key=lambda k: (k == "all", k)):
        g = groups[kind]
        m = summarize(np.asarray([int(s["I"]) for s in g], np.int64),
                      np.asarray([int(s["U"]) for s in g], np.int64), convention, (0.5,))
        out[kind] = {
            "sentences": len(g), "mIoU": m["mIoU"], "oIoU": m["oIoU"],
            "prec@0.5": m["prec@0.5"],
            "no_candidate": int(sum(not s["has_candidate"] for s in g)),
            "chance_mIoU": float(np.mean([chance[int(s["ref_id"])] for s in g])),
        }
    return out


def format_by_kind(table: Mapping[str, Mapping[str, float | int]]) -> str:
    """Plain-text table of `summarize_by_kind` (percentages)."""
    head = (f"{'kind':<10} {'sentences':>9} {'mIoU':>6} {'oIoU':>6} {'prec@0.5':>8} "
            f"{'no cand.':>8} {'chance mIoU':>11}")
    rows = [head, "-" * len(head)]
    for kind, r in table.items():
        rows.append(f"{kind:<10} {r['sentences']:>9} {100 * r['mIoU']:>6.2f} "
                    f"{100 * r['oIoU']:>6.2f} {100 * r['prec@0.5']:>8.2f} "
                    f"{r['no_candidate']:>8} {100 * r['chance_mIoU']:>11.2f}")
    return "\n".join(rows)


def annotate_kinds(recs: list[dict[str, Any]], manual_dir: str | Path | None,
                   dataset: str = "shapesref", convention: Convention = "standard"
                   ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float | int]] | None]:
    """For a dataset whose refs carry a kind (ShapesRef): every record gets its ``kind`` and
    the per-kind table of the records is returned. Otherwise `recs` unchanged and None."""
    kinds = ref_kinds(manual_dir, dataset)
    if not kinds:
        return recs, None
    recs = [{**r, "kind": kinds.get(int(r["ref_id"]), "")} for r in recs]
    chance = chance_iou(manual_dir, dataset, {int(r["ref_id"]) for r in recs})
    return recs, summarize_by_kind(recs, chance, convention)
