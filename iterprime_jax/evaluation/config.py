"""What an evaluation run is (`EvalConfig`), what it returns (`EvalResult`), its error
(`EvalError`), the ablation row type and the file names of a run directory."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import IteRPrimEConfig
from ..models.mask2former.preprocess import ProposeConfig
from ..shipped import SHAPESREF_MODEL, SHAPESREF_MODEL_NAME
from .datasets import LIBRARY_DATASETS, dataset_hooks

DATASETS = LIBRARY_DATASETS  # the library's; `datasets.dataset_names()` adds the registered
DEFAULT_DATASET = "shapesref"  # registered by the ShapesRef project (its entry point)
PHRASECUT = "phrasecut"
COCO_DATASETS = frozenset({"refcoco_unc", "refcoco_plus_unc", "refcocog_umd", "refcocog_google"})
COCO_CANVAS = 640
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
RUN_CONFIG = "run_config.json"
ABLATION = "ablation.json"
RUN_CONFIG_VERSION = 2  # 2: weights_fingerprint hashes the files' contents
MIN_SENTENCE_BUCKET = 4
MIN_PROPOSAL_BUCKET = 4
TINY_CANVAS = 128  # canvases up to this side get a default batch of 8 images


def default_data_dir() -> Path:
    """TFDS's own default data dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def shipped_model() -> str:
    """The library's shipped small demo model (`iterprime_jax.shipped.SHAPESREF_MODEL`, package
    data, found wherever the working directory is), resolved; its checkout path when the
    package lacks it (the caller reports it missing)."""
    if SHAPESREF_MODEL.is_dir():
        return str(SHAPESREF_MODEL.resolve())
    return SHAPESREF_MODEL_NAME


def default_out(dataset: str, split: str) -> str:
    """The default output dir of a run, under the working directory: ``results/DATASET-SPLIT``."""
    return f"results/{dataset}-{split}"

#: ``progress(done, total)``: sentences of this process done so far, and in all.
Progress = Callable[[int, int], None]


class EvalError(ValueError):
    """Bad evaluation input (the message names it) or a resume with a different run config."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. Defaults: ShapesRef val (`DEFAULT_DATASET`, registered by the
    ShapesRef project: generated into ``manual_dir`` if missing, evaluated with the shipped
    small model), oracle (``gt``) proposals. No default depends on the working directory except
    ``out``, an output (`with_defaults` fills the ones left None, some from the dataset's
    hooks, `datasets.DatasetHooks`).

    Attributes:
      dataset: one of `datasets.dataset_names()`: `DATASETS` (``refcoco+_unc`` is an alias of
        ``refcoco_plus_unc``) or a registered dataset.
      split: split name (val, testA, testB, test, ...).
      manual_dir: the raw files the TFDS builder reads (refer layout, or VGPhraseCut_v0; see
        tfds_refcoco/README.md); needed only while the split is not built. None: the dataset's
        ``default_manual_dir`` hook, if any.
      data_dir: TFDS data dir (built array_record files are cached there); None:
        `default_data_dir()` (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      weights: converted checkpoint dir or Hugging Face hub id (`runner.resolve_weights`);
        None: the dataset's ``default_weights`` hook (ShapesRef: the shipped model), else the
        library's shipped demo model (`shipped_model`); an optional
        ``method.json`` there holds recommended `IteRPrimEConfig` fields for that model.
      proposals: ``"gt"`` (the image's instance masks, oracle), ``"heatmap"`` (no proposals:
        thresholded heat map), ``"mask2former"`` (computed on the fly from the checkpoint
        `proposer_weights`, docs/method.md section 4) or the path of a COCO-style results JSON of
        class-agnostic masks.
      out: output directory (samples.jsonl, metrics.json, run_config.json); None:
        ``results/DATASET-SPLIT`` under the working directory (`default_out`).
      limit: evaluate only the first `limit` images of the split (all their sentences).
      batch_size: images per step (rounded up to a multiple of the local device count);
        default: the device count, or 8 for canvases <= 128. A step too large for the device
        memory is an EvalError naming it (docs/precision.md).
      canvas: square canvas side for every image (default 640 for COCO datasets, else the
        largest image side of the split rounded up to 64).
      convention: metric convention, "standard", "iterprime" or "phrasecut"
        (`iterprime_jax.metrics`); None: "phrasecut" (the official evaluator's) for PhraseCut,
        "standard" otherwise.
      prepare_sources: for a dataset with a ``prepare`` hook (ShapesRef: the generator), write
        its raw sources into `manual_dir` if missing.
      proposer_weights: converted Mask2Former checkpoint dir (proposals ``"mask2former"``).
      propose: the proposal rule (`ProposeConfig`: resize 800/1333, threshold 0.35, buckets).
      save_proposals: with ``"mask2former"``, also write the proposals to this COCO-style RLE
        JSON (readable as ``proposals=FILE`` by later runs).
      unseen: PhraseCut only: drop the tasks whose category is a COCO class (Global-Local
        CLIP's "unseen" evaluation).
      precision: matmul precision of the ITM model and the proposer, one of
        `models.loading.MATMUL_PRECISIONS` ("highest" | "high" | "default", docs/precision.md);
        None: the precision of the model given to `evaluate` (``model=``), else "highest".
        Recorded in run_config.json: a resume at another precision is refused.
    """

    dataset: str = DEFAULT_DATASET
    split: str = "val"
    manual_dir: str | None = None
    data_dir: str | None = None
    weights: str | None = None
    proposals: str = "gt"
    out: str | None = None
    limit: int | None = None
    batch_size: int | None = None
    canvas: int | None = None
    convention: str | None = None
    prepare_sources: bool = True
    proposer_weights: str | None = None
    propose: ProposeConfig = ProposeConfig()
    save_proposals: str | None = None
    unseen: bool = False
    precision: str | None = None

    def replace(self, **kw: Any) -> EvalConfig:
        return dataclasses.replace(self, **kw)

    def with_defaults(self) -> EvalConfig:
        """The fields left None resolved: convention ("phrasecut" for PhraseCut, else
        "standard"), data_dir, out and, from the dataset's hooks, manual_dir and weights (see
        the attributes). EvalError for an unknown dataset (naming the known ones)."""
        try:
            hooks = dataset_hooks(self.dataset)
        except ValueError as e:
            raise EvalError(str(e)) from None
        fill: dict[str, Any] = {}
        if self.convention is None:
            fill["convention"] = "phrasecut" if self.dataset == PHRASECUT else "standard"
        if self.data_dir is None:
            fill["data_dir"] = str(default_data_dir())
        if self.manual_dir is None and hooks is not None and hooks.default_manual_dir:
            fill["manual_dir"] = str(hooks.default_manual_dir())
        if self.weights is None:
            fill["weights"] = (hooks.default_weights() if hooks is not None
                               and hooks.default_weights else shipped_model())
        if self.out is None:
            fill["out"] = default_out(self.dataset, self.split)
        return self.replace(**fill) if fill else self


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
    elapsed_s: float  # the whole call: loading, dataset preparation and computing
    out: Path
    subsets: dict[str, dict[str, float | int]] | None = None  # PhraseCut, process 0
    by_kind: Any = None  # the dataset's report (`DatasetHooks.annotate`; ShapesRef: per kind)


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One row of the ablation table."""

    name: str
    method: IteRPrimEConfig
    use_proposals: bool
