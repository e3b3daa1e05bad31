"""Evaluation: IteRPrimE over a referring-segmentation split -> per-sentence I/U and metrics.

Modules: `config` (EvalConfig and its defaults, EvalError, file names), `index` (build / open a
tfds_refcoco split, group its refs by image), `phrasecut` (PhraseCut tasks, subsets),
`proposals` (gt / heatmap / mask2former / RLE-JSON proposals file), `proposer` (Mask2Former
proposals on the fly, --save-proposals), `loader` (host batches, prefetch thread), `device`
(mesh, jitted encode and eval step), `fingerprint` (content hashes of weights and files),
`records` (samples.jsonl, run_config.json, resume, metrics from records), `datasets` (the
interface through which a project registers a dataset: default sources and model, a report of
its own; ShapesRef's is the entry point ``shapesref``), `distributed` (jax.distributed start-up,
barriers, each process's images), `runner` (`evaluate`: the resumable driver; its docstring
lists the files written), `ablation` (`run_ablation`) with `bootstrap` (paired intervals),
`gallery` (a run's worst samples re-rendered) and `cli` (`iterprime-eval` / `run_eval.py`).
"""

from .ablation import ablation_rows, run_ablation
from .config import (
    ABLATION,
    DATASETS,
    METRICS,
    RUN_CONFIG,
    SAMPLES,
    AblationRow,
    EvalConfig,
    EvalError,
    EvalResult,
)
from .device import eval_step
from .distributed import initialize_distributed
from .index import prepare_split
from .proposals import load_proposals_file, read_proposals_json
from .records import metrics_from_samples, truncate_partial_line
from .runner import evaluate, load_model

__all__ = [
    "ABLATION", "DATASETS", "METRICS", "RUN_CONFIG", "SAMPLES", "AblationRow", "EvalConfig",
    "EvalError", "EvalResult", "ablation_rows", "eval_step", "evaluate",
    "initialize_distributed", "load_model", "load_proposals_file", "metrics_from_samples",
    "prepare_split", "read_proposals_json", "run_ablation", "truncate_partial_line",
]
