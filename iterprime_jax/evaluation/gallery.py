"""Look at an evaluation run: its worst samples, re-rendered from the dataset.

`samples.jsonl` (written by `iterprime_jax.evaluation.evaluate`) holds ids, I, U and IoU per
sentence, not pixels. `rerun_samples` fetches each chosen sample's image, ground-truth mask and
proposals from the same TFDS split and proposal source, runs `segment_images` again (one call,
all chosen sentences of every image) and recomputes I and U, so a gallery shows what the
evaluation scored; `SampleView.matches_record` checks it. The re-run batches images
differently from the evaluation, so float rounding can move a value across a threshold (the
heat-map mode's mask threshold; in principle a proposal choice): I/U may then differ by a
pixel or two (seen in heat-map mode on the PhraseCut test fixture). `plot_samples` in
`iterprime_jax.visualize` draws the views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IteRPrimEConfig
from ..method.pipeline import SegmentResult, segment_images
from .config import SAMPLES, EvalConfig, EvalError
from .index import build_index, open_split
from .proposals import decode_rles, proposal_source
from .records import read_samples


def read_run(out: str | Path) -> list[dict[str, Any]]:
    """The sample records of a finished run directory (its ``samples.jsonl``)."""
    path = Path(out) / SAMPLES
    if not path.is_file():
        raise EvalError(f"{path} does not exist: no finished evaluation in {out}")
    return read_samples(path)


def worst_samples(records: Iterable[Mapping[str, Any]], k: int = 8) -> list[dict[str, Any]]:
    """The `k` records with the lowest IoU (ties: by image, ref and sentence id)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    recs = sorted(records, key=lambda r: (float(r["IoU"]), int(r["image_id"]),
                                          int(r["ref_id"]), int(r["sent_id"])))
    return [dict(r) for r in recs[:k]]


@dataclasses.dataclass(frozen=True)
class SampleView:
    """One re-run sample: its record, image (H, W, 3) uint8, ground truth (H, W) bool, the
    proposals it was run with ((N, H, W) bool, None for heat-map mode), the fresh result and
    the recomputed intersection / union (pixels)."""

    record: dict[str, Any]
    image: np.ndarray
    gt: np.ndarray
    proposals: np.ndarray | None
    result: SegmentResult
    intersection: int
    union: int

    @property
    def iou(self) -> float:
        return self.intersection / self.union if self.union > 0 else 0.0

    @property
    def matches_record(self) -> bool:
        """The re-run gives the evaluation's I and U."""
        return (self.intersection, self.union) == (int(self.record["I"]),
                                                   int(self.record["U"]))


def _find_examples(light: Sequence[Mapping[str, Any]], ref_ids: set[int]) -> dict[int, int]:
    """ref_id -> example index in the split, read through the evaluator's own index (so the
    ids are the records' ids for every dataset, PhraseCut's task index included)."""
    found = {r.ref_id: r.index for m in build_index(light) for r in m.refs if r.ref_id in ref_ids}
    missing = sorted(ref_ids - set(found))
    if missing:
        raise EvalError(f"ref_ids {missing[:5]} are not in the split (is the config the run's?)")
    return found


def _proposals(config: EvalConfig, example: Mapping[str, Any], source: Any
               ) -> np.ndarray | None:
    kind = source.kind
    if kind == "gt":
        return np.asarray(example["proposals"]).astype(bool)
    if kind == "heatmap":
        return None
    image = np.asarray(example["image"])
    if kind == "file":
        rles = source.by_image.get(int(example["image_id"]), [])
        return decode_rles(rles, image.shape[:2], source.path, int(example["image_id"]))
    if kind == "mask2former":  # the run's proposer and rule (config.propose)
        return source.proposer([image])[0]
    raise EvalError(f"cannot re-run samples with proposals {config.proposals!r}")


def rerun_samples(model: Any, config: EvalConfig, records: Sequence[Mapping[str, Any]],
                  method: IteRPrimEConfig = IteRPrimEConfig()) -> list[SampleView]:
    """Re-run `records` (from `read_run` / `worst_samples`) of the run `config` describes.

    model: the run's ITM model; method: the run's method config. Proposals come from the
    run's source: the split's instance masks (gt), the proposals file, or Mask2Former run
    again (``config.proposer_weights`` and ``config.propose``). Returns one `SampleView` per
    record, in the records' order.
    """
    if not records:
        return []
    sources = open_split(config)
    source = proposal_source(config.proposals, config)
    where = _find_examples(sources.light, {int(r["ref_id"]) for r in records})
    by_image: dict[int, list[int]] = {}
    for k, r in enumerate(records):
        by_image.setdefault(int(r["image_id"]), []).append(k)
    groups = list(by_image.values())
    firsts = [sources.full[where[int(records[ks[0]]["ref_id"])]] for ks in groups]
    images = [np.asarray(ex["image"]) for ex in firsts]
    props = [_proposals(config, ex, source) for ex in firsts]
    texts = [[str(records[k]["sentence"]) for k in ks] for ks in groups]
    # one vmapped call over the images (one compilation), all chosen sentences of each
    results = segment_images(model, images, texts, None if source.kind == "heatmap" else props,
                             method)
    views: list[SampleView | None] = [None] * len(records)
    for ks, image, p, per_image in zip(groups, images, props, results, strict=True):
        for k, res in zip(ks, per_image, strict=True):
            ex = sources.mask_only[where[int(records[k]["ref_id"])]]
            gt = np.asarray(ex["mask"]).astype(bool)
            views[k] = SampleView(
                record=dict(records[k]), image=image, gt=gt, proposals=p, result=res,
                intersection=int((res.mask & gt).sum()), union=int((res.mask | gt).sum()))
    return [v for v in views if v is not None]
