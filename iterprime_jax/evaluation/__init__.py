"""Evaluation: IteRPrimE over a referring-segmentation split (dataset index, proposal sources,
the sharded / resumable / multi-process runner, samples and metrics files, the ablation).

`evaluate(EvalConfig(...))` and `run_ablation(...)` are the entry points (`run_eval.py` is their
CLI); see `iterprime_jax.evaluation.runner` for the files written.
"""

from .runner import (
    ABLATION,
    DATASETS,
    METHOD_FLAG_FIELDS,
    METHOD_JSON,
    METRICS,
    RUN_CONFIG,
    SAMPLES,
    TRACE_COUNT,
    AblationRow,
    EvalConfig,
    EvalError,
    EvalResult,
    ablation_rows,
    evaluate,
    initialize_distributed,
    load_method_json,
    load_model,
    metrics_from_samples,
    prepare_split,
    resolve_method_config,
    run_ablation,
    truncate_partial_line,
    validate_method_config,
)

__all__ = [
    "ABLATION", "DATASETS", "METHOD_FLAG_FIELDS", "METHOD_JSON", "METRICS", "RUN_CONFIG",
    "SAMPLES", "TRACE_COUNT", "AblationRow", "EvalConfig", "EvalError", "EvalResult",
    "ablation_rows", "evaluate", "initialize_distributed", "load_method_json", "load_model",
    "metrics_from_samples", "prepare_split", "resolve_method_config", "run_ablation",
    "truncate_partial_line", "validate_method_config",
]
