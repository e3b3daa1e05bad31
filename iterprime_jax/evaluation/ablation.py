"""The paper's ablation on one split: every `ablation_rows` config on the same images (image
embeddings and host-side inputs computed once per batch and shared by the rows) ->
``ablation.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np

from ..config import IteRPrimEConfig
from ..metrics import summarize
from ..models.loading import Model
from .bootstrap import paired_bootstrap
from .checks import check_settings
from .config import ABLATION, PHRASECUT, AblationRow, EvalConfig, EvalError, Progress
from .distributed import barrier, process_share
from .loader import HostBatch
from .proposals import proposal_source
from .records import atomic_write, merge_parts, sort_key, write_part
from .runner import Context, make_context, model_and_method, run_batches, sample_records

log = logging.getLogger(__name__)


def ablation_rows(base: IteRPrimEConfig) -> list[AblationRow]:
    """The paper's ablation, cumulative: heat-map threshold only; + proposal selection;
    + PWE; + IGRS with 2, 3, 4 passes; full (`base` as configured)."""
    one = base.replace(iterations=1)
    rows = [
        AblationRow("heat-map threshold", one.replace(use_pwe=False), False),
        AblationRow("+ proposal selection", one.replace(use_pwe=False), True),
        AblationRow("+ PWE", one.replace(use_pwe=True), True),
    ]
    rows += [AblationRow(f"+ IGRS ({k} passes)", base.replace(iterations=k, use_pwe=True), True)
             for k in (2, 3, 4)]
    rows.append(AblationRow("full", base, True))
    return rows


def run_ablation(config: EvalConfig = EvalConfig(), method: IteRPrimEConfig | None = None, *,
                 model: Model | None = None, progress: Progress | None = None
                 ) -> dict[str, dict[str, float | int]] | None:
    """Every `ablation_rows` config on the same images (embeddings and inputs shared); writes
    ``out/ablation.json`` and returns ``{row name: summarize(...)}`` (None on processes > 0).

    Proposal rows use ``config.proposals`` (``gt`` when it is ``heatmap``). Not resumable.
    """
    t_start = time.perf_counter()
    config, model, weights, method = _settings(config, model, method)
    proposals = proposal_source(config.proposals, config)
    ctx = make_context(config, model, proposals, weights)
    rows = ablation_rows(method)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_part(out, ABLATION, jax.process_index(), _counts(ctx, rows, progress))
    barrier("iterprime_ablation_written")
    if jax.process_index() != 0:
        return None
    merged: dict[str, list[list[int]]] = {r.name: [] for r in rows}
    for part in merge_parts(out, ABLATION, jax.process_count()):
        for name, v in part.items():
            merged[name] += v
    table = ablation_table(rows, merged, config.convention)
    record = {
        "dataset": config.dataset, "split": config.split, "proposals": proposals.describe(),
        "convention": config.convention, "weights": str(weights),
        "num_images": len(ctx.images), "num_samples": sum(m.num_sentences for m in ctx.images),
        "intervals": "95% percentile bootstrap over sentences (2000 resamples shared by all "
                     "rows); d_mIoU = change of mIoU over the previous row, paired",
        "rows": [{"name": r.name, "proposals": proposals.describe() if r.use_proposals
                  else "heatmap", "method": dataclasses.asdict(r.method),
                  "metrics": table[r.name]} for r in rows],
    }
    atomic_write(out / ABLATION, json.dumps(record, indent=2) + "\n")
    log.info("ablation: %d rows over %d sentences in %.1fs", len(rows), record["num_samples"],
             time.perf_counter() - t_start)
    return table


def _settings(config: EvalConfig, model: Model | None, method: IteRPrimEConfig | None
              ) -> tuple[EvalConfig, Model, Path, IteRPrimEConfig]:
    """The checked settings of an ablation: (config with defaults, the proposals it uses and
    the model's precision; the model; its weights directory; the method)."""
    config = config.with_defaults()
    check_settings(config)
    model, weights, method = model_and_method(config, model, method)
    config = config.replace(precision=getattr(model, "precision", "highest"))  # proposer too
    if config.proposals == "heatmap" and config.dataset == PHRASECUT:
        raise EvalError("the ablation's proposal rows need proposals and PhraseCut has no "
                        "oracle ('gt') masks: pass mask2former or a proposals FILE")
    if config.proposals == "heatmap":
        config = config.replace(proposals="gt")
    if config.save_proposals is not None:
        raise EvalError("save_proposals is not supported by the ablation: save them with a "
                        "plain run, then pass the file as proposals")
    return config, model, weights, method


def _counts(ctx: Context, rows: list[AblationRow], progress: Progress | None
            ) -> dict[str, list[list[int]]]:
    """Every row over this process's images: {row name: [[image_id, ref_id, sent_id, I, U],
    ...]}; `progress(done, total)` in sentences."""
    mine = process_share(ctx.images)
    total, done = sum(m.num_sentences for m in mine), 0
    counts: dict[str, list[list[int]]] = {r.name: [] for r in rows}
    if progress:
        progress(0, total)

    def on_batch(hb: HostBatch, outs: list[tuple[np.ndarray, ...]]) -> None:
        nonlocal done
        for r, o in zip(rows, outs, strict=True):
            for recs in sample_records(hb, o):
                counts[r.name] += [[*sort_key(x), x["I"], x["U"]] for x in recs]
        done += hb.sentences
        if progress:
            progress(done, total)

    run_batches(ctx, mine, rows, on_batch)
    return counts


def ablation_table(rows: list[AblationRow], counts: dict[str, list[list[int]]],
                   convention: str) -> dict[str, dict[str, float | int]]:
    """{row name: `summarize` of its sentences' I and U under `convention`, with the paired
    95% bootstrap intervals (`paired_bootstrap`) after oIoU, mIoU, prec@0.5 and prec@0.9}.
    counts: {row name: [[image_id, ref_id, sent_id, I, U], ...]} (any order)."""
    table: dict[str, dict[str, float | int]] = {}
    per_sentence: dict[str, tuple[list[int], list[int]]] = {}
    for r in rows:
        v = sorted(counts[r.name])
        per_sentence[r.name] = ([x[3] for x in v], [x[4] for x in v])
        table[r.name] = summarize(np.asarray(per_sentence[r.name][0], np.int64),
                                  np.asarray(per_sentence[r.name][1], np.int64),
                                  convention=convention)  # type: ignore[arg-type]
    intervals = paired_bootstrap(per_sentence,
                                 convention=convention)  # type: ignore[arg-type]
    first = ("oIoU", "mIoU", "prec@0.5", "prec@0.9")
    for r in rows:  # 95% bootstrap intervals over sentences, next to the point values
        m = table[r.name]
        table[r.name] = ({k: m[k] for k in first if k in m} | intervals[r.name]
                         | {k: v for k, v in m.items() if k not in first})
    return table
