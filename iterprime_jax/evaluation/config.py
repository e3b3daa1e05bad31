"""What an evaluation run is (`EvalConfig`), what it returns (`EvalResult`), its error
(`EvalError`), the ablation row type and the file names of a run directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import IteRPrimEConfig
from ..models.mask2former.preprocess import ProposeConfig

DATASETS: tuple[str, ...] = ("refcoco_unc", "refcoco+_unc", "refcocog_umd", "refcocog_google",
                             "shapesref", "phrasecut")
PHRASECUT = "phrasecut"
COCO_DATASETS = frozenset({"refcoco_unc", "refcoco_plus_unc", "refcocog_umd", "refcocog_google"})
COCO_CANVAS = 640
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
RUN_CONFIG = "run_config.json"
ABLATION = "ablation.json"
RUN_CONFIG_VERSION = 1
MIN_SENTENCE_BUCKET = 4
MIN_PROPOSAL_BUCKET = 4
TINY_CANVAS = 128  # canvases up to this side get a default batch of 8 images

#: ``progress(done, total)``: sentences of this process done so far, and in all.
Progress = Callable[[int, int], None]


class EvalError(ValueError):
    """Bad evaluation input (the message names it) or a resume with a different run config."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. Defaults: ShapesRef val with the shipped small model (built into
    ``manual_dir`` if missing), oracle (``gt``) proposals.

    Attributes:
      dataset: one of `DATASETS` (``refcoco+_unc`` is an alias of ``refcoco_plus_unc``).
      split: split name (val, testA, testB, test, ...).
      manual_dir: refer-layout root the TFDS builder reads (see tfds_refcoco/README.md).
      data_dir: TFDS data dir (built array_record files are cached there).
      weights: converted checkpoint dir (`iterprime_jax.load`); an optional ``method.json``
        there holds recommended `IteRPrimEConfig` fields for that model.
      proposals: ``"gt"`` (the image's instance masks, oracle), ``"heatmap"`` (no proposals:
        thresholded heat map), ``"mask2former"`` (computed on the fly from the checkpoint
        `proposer_weights`, docs/method.md section 4) or the path of a COCO-style results JSON of
        class-agnostic masks.
      out: output directory (samples.jsonl, metrics.json, run_config.json).
      limit: evaluate only the first `limit` images of the split (all their sentences).
      batch_size: images per step (rounded up to a multiple of the local device count);
        default: the device count, or 8 for canvases <= 128.
      canvas: square canvas side for every image (default 640 for COCO datasets, else the
        largest image side of the split rounded up to 64).
      convention: metric convention, "standard", "iterprime" or "phrasecut"
        (`iterprime_jax.metrics`); None: "phrasecut" (the official evaluator's) for PhraseCut,
        "standard" otherwise.
      build_shapesref: for dataset shapesref, write the benchmark into `manual_dir` if missing.
      proposer_weights: converted Mask2Former checkpoint dir (proposals ``"mask2former"``).
      propose: the proposal rule (`ProposeConfig`: resize 800/1333, threshold 0.35, buckets).
      save_proposals: with ``"mask2former"``, also write the proposals to this COCO-style RLE
        JSON (readable as ``proposals=FILE`` by later runs).
      unseen: PhraseCut only: drop the tasks whose category is a COCO class (Global-Local
        CLIP's "unseen" evaluation).
    """

    dataset: str = "shapesref"
    split: str = "val"
    manual_dir: str = "data/shapesref_raw"
    data_dir: str = "data/tfds"
    weights: str = "weights/shapesref-itm"
    proposals: str = "gt"
    out: str = "results/shapesref-val"
    limit: int | None = None
    batch_size: int | None = None
    canvas: int | None = None
    convention: str | None = None
    build_shapesref: bool = True
    proposer_weights: str | None = None
    propose: ProposeConfig = ProposeConfig()
    save_proposals: str | None = None
    unseen: bool = False

    def replace(self, **kw: Any) -> EvalConfig:
        return dataclasses.replace(self, **kw)

    def with_defaults(self) -> EvalConfig:
        """The convention resolved (None: "phrasecut" for PhraseCut, else "standard")."""
        if self.convention is not None:
            return self
        return self.replace(convention="phrasecut" if self.dataset == PHRASECUT else "standard")


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What `evaluate` returns. `metrics` is ``{split: summarize(...)}`` on process 0, None on
    the others; `computed` counts the samples this process computed in this call (resume
    skips the rest)."""

    metrics: dict[str, dict[str, float | int]] | None
    num_images: int
    num_samples: int
    no_candidate: int | None
    computed: int
    elapsed_s: float
    out: Path
    subsets: dict[str, dict[str, float | int]] | None = None  # PhraseCut, process 0
    by_kind: dict[str, dict[str, float | int]] | None = None


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One row of the ablation table."""

    name: str
    method: IteRPrimEConfig
    use_proposals: bool
