"""The evaluation driver: a dataset split in, per-sentence I/U and split metrics out.

`evaluate(EvalConfig(...))` runs IteRPrimE over every sentence of a `tfds_refcoco` split and writes,
under `EvalConfig.out`:

* ``samples.jsonl``: one JSON object per line and per sentence, written as it goes (flushed after
  every image)::

      {"image_id", "ref_id", "ann_id", "sent_id", "sentence", "I", "U", "IoU", "iterations",
       "primary_word", "proposal", "has_candidate"}

  ``I``/``U`` are pixel counts at the original image resolution; ``IoU`` = I / U (0 when U == 0,
  whatever the metric convention); ``iterations`` = accepted IGRS passes; ``proposal`` = the
  chosen proposal (its COCO ann id for ``gt`` proposals, its index among the image's entries
  for a proposals file, -1 for none / heat-map mode). At the end the file is rewritten sorted by
  ``(image_id, ref_id, sent_id)`` (one line per sample). PhraseCut rows carry ``task_id`` and
  the fields of its official subsets (`iterprime_jax.evaluation.phrasecut`); there ``ref_id``
  is the task's position in the split, ``sent_id`` 0 and ``ann_id`` -1.
* ``metrics.json``: ``{"dataset", "split", "proposals", "convention", "weights", "method",
  "metrics": {split: {"oIoU", "mIoU", "prec@0.5".."prec@0.9", "n"}}, "num_images",
  "num_samples", "no_candidate", "truncated_expressions"}``, computed from the samples' I and
  U (int64) with `iterprime_jax.metrics.summarize`. A sample without a candidate is a miss,
  never dropped.
  PhraseCut adds ``"subsets": {subset: {...}}`` (official subsets) and ``"unseen"``.
* ``run_config.json``: what the run is (dataset, split, weights, proposals, method config),
  written once every input is checked (`checks`, the split, the proposals file, spaCy), just
  before the first sample; a restart with the same ``out`` resumes (finished images are
  skipped) and refuses a different run config (weights and proposals compared by content),
  unless ``out`` holds no finished sample. A run that fails before its first sample removes
  what it wrote. A run over fewer images than ``out`` holds samples of is refused
  (metrics.json describes all of samples.jsonl).

`run_ablation(...)` runs the paper's ablation on the same data (image embeddings and host-side
inputs computed once per batch and shared by every row) and writes ``ablation.json``.

Scale: image embeddings are computed once per image; ``batch_size`` images are processed per
step, the image axis sharded over `jax.local_devices()` (a `Mesh` with axis ``"data"``,
parameters replicated); a background thread prepares the next batch (decoding, proposals,
spaCy + tokenisation) while the devices run the current one. Several processes
(`jax.distributed`) each take the images ``i % process_count == process_index``, write
``samples.p{process}.jsonl``, and process 0 merges after a barrier.

The library never prints: progress is reported through a ``progress(done, total)`` callback
(sentences of this process) and `logging`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..buckets import bucket, round_up
from ..config import IteRPrimEConfig
from ..memory import DeviceMemoryError, first_line, is_out_of_memory
from ..method.pipeline import canvas_side
from ..method.settings import resolve_method, validate_method
from ..metrics import CONVENTIONS
from ..models.loading import (
    Model,
    check_precision,
    is_hub_id,
    load,
    resolve_hub_id,
)
from . import phrasecut
from .checks import (
    check_dataset_options,
    check_no_other_samples,
    check_parser,
    check_proposals_match,
    check_settings,
    check_values,
)
from .config import (
    COCO_CANVAS,
    COCO_DATASETS,
    METRICS,
    MIN_PROPOSAL_BUCKET,
    PHRASECUT,
    RUN_CONFIG,
    SAMPLES,
    TINY_CANVAS,
    AblationRow,
    EvalConfig,
    EvalError,
    EvalResult,
    Progress,
)
from .datasets import dataset_hooks, dataset_names, is_known
from .device import Device
from .distributed import barrier, process_share
from .index import ImageMeta, SplitSources, build_index, open_split, prepare_split
from .loader import HostBatch, Loader, Prefetch
from .proposals import ProposalSource, proposal_source
from .records import (
    atomic_write,
    check_run_config,
    dumps_sample,
    has_samples,
    merge_samples,
    metrics_from_samples,
    read_samples,
    run_identity,
    sample_files,
    sample_key,
    sort_key,
    truncate_partial_line,
)

log = logging.getLogger(__name__)


def default_batch_size(num_devices: int, canvas: int) -> int:
    base = 8 if canvas <= TINY_CANVAS else 1
    return round_up(max(base, num_devices), num_devices)


@dataclasses.dataclass
class Context:
    """Everything a run needs once the split is open and the devices are set up."""

    config: EvalConfig
    model: Model
    device: Device
    sources: SplitSources
    images: list[ImageMeta]          # every image of the run (all processes)
    proposals: ProposalSource
    canvas: int
    batch_size: int
    weights: Path


def resolve_weights(name: str) -> Path:
    """`--weights` -> an absolute converted directory: a directory, or a Hugging Face hub id
    (fetched and converted once, `models.loading.resolve_hub_id`). A name that is none of
    these comes back resolved (the caller reports it missing)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if is_hub_id(name):
        return resolve_hub_id(name)
    return path.resolve()


def load_model(config: EvalConfig, model: Model | None) -> tuple[Model, Path]:
    """`model` (or, when None, the checkpoint at ``config.weights``) and the resolved weights
    directory (`resolve_weights`; with a `model` given, the directory it was loaded from).
    The model runs at ``config.precision`` when it is set (else at its own, "highest" when
    loaded here)."""
    if config.precision is not None:
        try:
            check_precision(config.precision, "precision")
        except ValueError as e:
            raise EvalError(str(e)) from None
    config = config.with_defaults()  # weights: the dataset's default model if not given
    path = getattr(model, "path", None)
    if model is None:
        weights = resolve_weights(str(config.weights))
        if not weights.is_dir():
            raise EvalError(f"weights directory {config.weights} does not exist")
        model = load(weights, precision=config.precision or "highest")
    else:
        weights = (Path(path).resolve() if path is not None
                   else resolve_weights(str(config.weights)))
    if not isinstance(model, Model):
        raise EvalError(f"weights {config.weights} hold a {type(model.config).__name__} "
                        "checkpoint; IteRPrimE needs an image-text matching (BLIP) model "
                        "there (a Mask2Former goes to proposer_weights)")
    if config.precision is not None and getattr(model, "precision", None) != config.precision:
        model = dataclasses.replace(model, precision=config.precision)
    return model, weights


def model_and_method(config: EvalConfig, model: Model | None, method: IteRPrimEConfig | None
                     ) -> tuple[Model, Path, IteRPrimEConfig]:
    """The model (loaded unless given; at ``config.precision`` when set), its directory and
    the validated method config (None: `resolve_method` without overrides: the weights'
    method.json over the defaults)."""
    model, weights = load_model(config, model)
    text_config = model.config.text
    try:
        if method is None:
            method = resolve_method(weights, text_config.num_hidden_layers,
                                    max_positions=text_config.max_position_embeddings)
        validate_method(method, text_config.num_hidden_layers, text_config.max_position_embeddings)
    except ValueError as e:
        raise EvalError(str(e)) from None
    return model, weights, method


def make_context(config: EvalConfig, model: Model, proposals: ProposalSource, weights: Path
                 ) -> Context:
    """Checks the run's settings, builds / opens the split, indexes it, picks the canvas and
    batch size, and sets up the devices."""
    if not is_known(config.dataset):
        raise EvalError(f"unknown dataset {config.dataset!r}; known: "
                        f"{', '.join(dataset_names())}")
    if config.convention not in CONVENTIONS:
        raise EvalError(f"convention must be one of {CONVENTIONS}, got {config.convention!r}")
    check_values(config)
    check_dataset_options(config, proposals)
    from tfds_refcoco import canonical_config_name

    # Process 0 builds the dataset (one writer), the others open it after a barrier.
    if jax.process_index() == 0:
        prepare_split(config)
    barrier("iterprime_eval_dataset_ready")
    sources = open_split(config)
    t0 = time.perf_counter()
    images = build_index(sources.light, sources.name)
    split_ids = {m.image_id for m in images}
    if config.unseen:
        n_all = sum(m.num_sentences for m in images)
        images = phrasecut.drop_seen(images)
        log.info("unseen: %d of %d tasks kept (categories outside COCO's 80 classes)",
                 sum(m.num_sentences for m in images), n_all)
    if config.limit is not None:
        images = images[: config.limit]
    if not images:
        raise EvalError(f"{sources.name} holds no image")
    log.info("%s: %d images, %d sentences (index in %.1fs)", sources.name, len(images),
             sum(m.num_sentences for m in images), time.perf_counter() - t0)
    name = canonical_config_name(config.dataset)
    largest = max(max(m.hw) for m in images)
    if config.canvas is not None:
        canvas = int(config.canvas)
    elif name in COCO_DATASETS:
        canvas = max(COCO_CANVAS, canvas_side((largest, largest)))
    else:
        canvas = canvas_side((largest, largest))
    too_big = [m.image_id for m in images if max(m.hw) > canvas]
    if too_big:
        raise EvalError(f"canvas {canvas} is smaller than {len(too_big)} images (e.g. image "
                        f"{too_big[0]}); pass a larger --canvas")
    if proposals.kind == "file":
        check_proposals_match(proposals, split_ids, images, sources.name)
    device = Device(model)
    share = max(1, len(process_share(images)))
    if config.batch_size is None:
        bs = min(default_batch_size(device.count, canvas), round_up(share, device.count))
    else:
        bs = config.batch_size
        if bs > share:
            log.info("batch size %d capped to the %d images of this process", bs, share)
            bs = share
    if bs % device.count:
        log.info("batch size %d rounded up to %d (a multiple of %d local devices)", bs,
                 round_up(bs, device.count), device.count)
        bs = round_up(bs, device.count)
    return Context(config, model, device, sources, images, proposals, canvas, bs, weights)


def batches(images: list[ImageMeta], size: int) -> list[list[ImageMeta]]:
    return [images[i: i + size] for i in range(0, len(images), size)]


def run_batches(ctx: Context, images: list[ImageMeta], rows: Sequence[AblationRow],
                on_batch: Callable[[HostBatch, list[tuple[np.ndarray, ...]]], None]) -> int:
    """Prefetch + device loop over `images`; calls `on_batch(batch, outputs per row)`."""
    if not images:
        return 0
    text_keys = {(r.method.use_template, r.method.template, r.method.max_text_length,
                  r.method.parser, r.method.spacy_model, r.method.authors_code,
                  r.method.append_sep) for r in rows}
    if len(text_keys) != 1:
        raise EvalError("rows of one run must share the text settings")
    proposal_bucket = 0
    if any(r.use_proposals for r in rows):
        proposal_bucket = bucket(max(ctx.proposals.count(m) for m in images),
                                 MIN_PROPOSAL_BUCKET)
    loader = Loader(ctx.model, ctx.device, ctx.sources, ctx.proposals, rows[0].method,
                    ctx.canvas, proposal_bucket, ctx.batch_size,
                    need_props=any(r.use_proposals for r in rows),
                    need_no_props=any(not r.use_proposals for r in rows),
                    save_proposals=ctx.config.save_proposals is not None)
    prefetch = Prefetch(loader.make, batches(images, ctx.batch_size))
    truncated = 0
    try:
        truncated = _device_loop(ctx, prefetch, rows, on_batch, proposal_bucket)
    finally:
        prefetch.close()
    if truncated:
        log.warning("%d expressions were longer than max_text_length=%d tokens and were "
                    "truncated (truncated_expressions in metrics.json)", truncated,
                    rows[0].method.max_text_length)
    return truncated


def _device_loop(ctx: Context, prefetch: Prefetch, rows: Sequence[AblationRow],
                 on_batch: Callable[[HostBatch, list[tuple[np.ndarray, ...]]], None],
                 proposal_bucket: int) -> int:
    """The device side of `run_batches`; returns the truncated sentences. A batch too large
    for the device memory is an EvalError naming batch_size (`device.batch_error`): the steps
    check theirs (`Device.step`); XLA's out-of-memory error raised elsewhere (preparing a
    batch, fetching its outputs) and the proposer's (`DeviceMemoryError`) are re-raised so."""
    truncated = 0
    error = ctx.device.error(ctx.batch_size)
    try:
        for host_batch in prefetch:
            embeds = ctx.device.encode(host_batch.pixels)
            outs: dict[tuple[IteRPrimEConfig, bool], Any] = {}
            for r in rows:  # identical rows (e.g. "full" = "+ IGRS (3)") run once
                if (r.method, r.use_proposals) not in outs:
                    outs[r.method, r.use_proposals] = ctx.device.step(
                        r.method, ctx.canvas, host_batch.step_inputs(embeds, r.use_proposals))
            host = {k: tuple(np.asarray(a) for a in jax.device_get(o)) for k, o in outs.items()}
            truncated += host_batch.truncated
            on_batch(host_batch, [host[r.method, r.use_proposals] for r in rows])
    except DeviceMemoryError as e:  # the Mask2Former proposer's (on the prefetch thread)
        raise error(f"the Mask2Former proposals of a batch ({e.call})", e.detail) from e
    except jax.errors.JaxRuntimeError as e:
        if not is_out_of_memory(e):
            raise
        raise error(f"a batch of {ctx.batch_size} images (canvas {ctx.canvas}, "
                    f"{proposal_bucket} proposals per image)",
                    f"out of memory on the {ctx.device.memory.device} device(s): "
                    f"{first_line(e)}") from e
    return truncated


def sample_records(host_batch: HostBatch, out: tuple[np.ndarray, ...]
                   ) -> list[list[dict[str, Any]]]:
    """Per image of the batch, the sample records of its sentences (the samples.jsonl lines)
    from the step outputs (I, U, passes, proposal index, has candidate); a sentence whose
    prompt was cut to max_text_length gets ``"truncated": true`` (others no such key)."""
    inter, union, iters, index, has = out
    per_image = []
    for k, meta in enumerate(host_batch.images):
        recs, s = [], 0
        ids = host_batch.proposal_ids[k]
        cut = (host_batch.truncated_at[k] if k < len(host_batch.truncated_at)
               else [False] * meta.num_sentences)
        for ref in meta.refs:
            for sid, sent in zip(ref.sent_ids, ref.sentences, strict=True):
                i, u = int(inter[k, s]), int(union[k, s])
                j = int(index[k, s])
                recs.append({
                    "image_id": meta.image_id, "ref_id": ref.ref_id, "ann_id": ref.ann_id,
                    "sent_id": sid, "sentence": sent, "I": i, "U": u,
                    "IoU": i / u if u > 0 else 0.0, "iterations": int(iters[k, s]),
                    "primary_word": host_batch.primary_words[k][s],
                    "proposal": int(ids[j]) if 0 <= j < len(ids) else -1,
                    "has_candidate": bool(has[k, s]),
                    **({"truncated": True} if cut[s] else {}),
                    **dict(ref.extra),
                })
                s += 1
        per_image.append(recs)
    return per_image


def evaluate(config: EvalConfig = EvalConfig(), method: IteRPrimEConfig | None = None, *,
             model: Model | None = None, progress: Progress | None = None) -> EvalResult:
    """Evaluate one split (resumable; see the module docstring).

    Args:
      config: what to run and where to write.
      method: the method config; None: `resolve_method` defaults (the weights'
        ``method.json`` over the paper's defaults, layer clipped to the model).
      model: an already loaded `iterprime_jax.Model` (else loaded from `config.weights`).
      progress: called as ``progress(done, total)`` (sentences of this process) at the start
        and after every batch.
    """
    t_start = time.perf_counter()
    ctx, method, identity, done = _checked_run(config, method, model)
    out = Path(str(ctx.config.out))
    created = [q for q in (out, *out.parents) if not q.exists()]
    resumed = _write_run_config(out, identity)
    try:
        return _evaluate(ctx.config, method, ctx, out, done, resumed, progress, t_start)
    except BaseException:
        if jax.process_index() == 0 and not resumed and not has_samples(out):
            _undo_start(out, created)  # failed before its first sample: --out as it was
        raise


def _checked_run(config: EvalConfig, method: IteRPrimEConfig | None, model: Model | None
                 ) -> tuple[Context, IteRPrimEConfig, dict[str, Any], set[tuple[int, int]]]:
    """Everything that can fail on the settings or the inputs, checked before the run config
    is written: a refused resume, the split, the proposals, the parser. Returns the run's
    context, its method, its identity (run_config.json) and the samples already in ``out``."""
    config = config.with_defaults()
    check_settings(config)
    model, weights, method = model_and_method(config, model, method)
    config = config.replace(precision=getattr(model, "precision", "highest"))  # proposer too
    proposals = proposal_source(config.proposals, config)
    check_dataset_options(config, proposals)
    out = Path(str(config.out))
    identity = run_identity(config, method, proposals, weights)
    if jax.process_index() == 0:
        check_run_config(out, identity, write=False)
    ctx = make_context(config, model, proposals, weights)
    check_parser(method)
    done: set[tuple[int, int]] = set()
    for f in sample_files(out):
        done.update(sample_key(r) for r in read_samples(f))
    check_no_other_samples(out, done, ctx.images)
    return ctx, method, identity, done


def _write_run_config(out: Path, identity: dict[str, Any]) -> bool:
    """Process 0 writes run_config.json (one writer), the others check it once written;
    whether the run resumes one of ``out``."""
    pi = jax.process_index()
    resumed = check_run_config(out, identity, write=True) if pi == 0 else False
    barrier("iterprime_eval_run_config_written")
    if pi != 0:
        resumed = check_run_config(out, identity, write=False)
    return resumed


def _undo_start(out: Path, created: list[Path]) -> None:
    """Remove what a run that failed before its first sample wrote: run_config.json, empty
    samples files and the folders it created (when empty)."""
    for f in (out / RUN_CONFIG, *sample_files(out)):
        try:
            if f.name == RUN_CONFIG or f.stat().st_size == 0:
                f.unlink()
        except OSError:
            pass
    for q in created:  # deepest first
        try:
            q.rmdir()
        except OSError:
            break


def _evaluate(config: EvalConfig, method: IteRPrimEConfig, ctx: Context, out: Path,
              done: set[tuple[int, int]], resumed: bool, progress: Progress | None,
              t_start: float) -> EvalResult:
    """`evaluate` once the run config is written: compute what is missing, merge, metrics."""
    pi = jax.process_index()
    out.mkdir(parents=True, exist_ok=True)
    mine = process_share(ctx.images)
    todo = [m for m in mine if not all(k in done for k in m.keys())]
    total = sum(m.num_sentences for m in mine)
    finished = total - sum(m.num_sentences for m in todo)
    if resumed and finished:
        log.info("resuming in %s: %d of %d images (%d sentences) of this process already "
                 "done", out, len(mine) - len(todo), len(mine), finished)
    log.info("process %d/%d: %d images, %d sentences to go; canvas %d, %d images per step "
             "over %d local device(s), proposals %s, method %s", pi, jax.process_count(),
             len(todo), total - finished, ctx.canvas, ctx.batch_size, ctx.device.count,
             ctx.proposals.kind, method)
    if progress:
        progress(finished, total)
    t_compute = time.perf_counter()
    computed = _compute(ctx, method, out, todo, (finished, total), progress)
    compute_s = time.perf_counter() - t_compute
    barrier("iterprime_eval_samples_written")
    result_metrics, no_cand, subsets, report = None, None, None, None
    if pi == 0:
        result_metrics, no_cand, subsets, report = _finish(config, method, ctx, out)
    elapsed = time.perf_counter() - t_start
    log.info("process %d: %d samples computed in %.1fs (compilation included); %.1fs for the "
             "whole run with loading and dataset preparation", pi, computed, compute_s, elapsed)
    return EvalResult(metrics=result_metrics, num_images=len(ctx.images),
                      num_samples=sum(m.num_sentences for m in ctx.images),
                      no_candidate=no_cand, computed=computed, elapsed_s=elapsed, out=out,
                      subsets=subsets, by_kind=report)


def _compute(ctx: Context, method: IteRPrimEConfig, out: Path, todo: list[ImageMeta],
             counts: tuple[int, int], progress: Progress | None) -> int:
    """Runs the images `todo`, appending their samples (and, with save_proposals, their
    proposals) to this process's files in `out` image by image; `counts` = (sentences
    finished, total) of this process for `progress`. Returns the sentences computed."""
    pi, pc = jax.process_index(), jax.process_count()
    own = out / (SAMPLES if pc == 1 else f"samples.p{pi}.jsonl")
    cut = truncate_partial_line(own)
    if cut:
        log.warning("%s: removed a half-written last line (%d bytes)", own, cut)
    finished, total = counts
    computed = 0
    saver = None
    if ctx.config.save_proposals is not None:
        from .proposer import ProposalSaver

        saver = ProposalSaver(out, pi)
    with own.open("a", encoding="utf-8") as fh:
        def on_batch(host_batch: HostBatch, outs: list[tuple[np.ndarray, ...]]) -> None:
            nonlocal finished, computed
            if saver is not None and host_batch.proposal_rles is not None:
                saver.write([m.image_id for m in host_batch.images], host_batch.proposal_rles)
            for recs in sample_records(host_batch, outs[0]):
                fh.write("".join(dumps_sample(r) + "\n" for r in recs))
                fh.flush()
            finished += host_batch.sentences
            computed += host_batch.sentences
            if progress:
                progress(finished, total)

        run_batches(ctx, todo, [AblationRow("main", method, ctx.proposals.uses_proposals)],
                    on_batch)
    return computed


def _finish(config: EvalConfig, method: IteRPrimEConfig, ctx: Context, out: Path
            ) -> tuple[dict[str, dict[str, float | int]], int, Any, Any]:
    """Process 0 after every sample is written: merges the sample files, lets the dataset's
    ``annotate`` hook add its fields (samples.jsonl rewritten) and report, writes metrics.json
    and the saved proposals. Returns (metrics, no_candidate, PhraseCut subsets, report)."""
    recs = merge_samples(out)
    hooks = dataset_hooks(config.dataset)
    report = None
    if hooks is not None and hooks.annotate is not None:
        recs, report = hooks.annotate(recs, config.manual_dir, str(config.convention))
        if report is not None:
            atomic_write(out / SAMPLES, "".join(dumps_sample(r) + "\n" for r in recs))
    metrics, no_cand, subsets = write_metrics(config, ctx, method, ctx.proposals, recs, report)
    if config.save_proposals is not None:
        from .proposer import ProposalSaver

        try:
            n = ProposalSaver.merge(out, [m.image_id for m in ctx.images], config.save_proposals)
        except ValueError as e:
            raise EvalError(str(e)) from None
        log.info("wrote %d proposals of %d images to %s", n, len(ctx.images),
                 config.save_proposals)
    return metrics, no_cand, subsets, report


def write_metrics(config: EvalConfig, ctx: Context, method: IteRPrimEConfig,
                  proposals: ProposalSource, recs: list[dict[str, Any]],
                  by_kind: Any = None
                  ) -> tuple[dict[str, dict[str, float | int]], int,
                             dict[str, dict[str, float | int]] | None]:
    by_key = {sample_key(r): r for r in recs}
    wanted = [k for m in ctx.images for k in m.keys()]
    missing = [k for k in wanted if k not in by_key]
    if missing:
        raise EvalError(f"{len(missing)} samples are missing from {config.out} after the run "
                        f"(e.g. ref_id/sent_id {missing[0]}); did a process fail?")
    chosen = sorted((by_key[k] for k in wanted), key=sort_key)
    metrics = {config.split: metrics_from_samples(chosen, config.convention)}
    no_cand = sum(not r["has_candidate"] for r in chosen) if proposals.uses_proposals else 0
    cut = sum(bool(r.get("truncated")) for r in chosen)
    record = {
        "dataset": config.dataset, "split": config.split, "proposals": proposals.describe(),
        "convention": config.convention, "weights": str(ctx.weights),
        "method": dataclasses.asdict(method), "metrics": metrics,
        "num_images": len(ctx.images), "num_samples": len(chosen), "no_candidate": no_cand,
        "truncated_expressions": cut,
    }
    subsets = None
    if config.dataset == PHRASECUT:
        subsets = phrasecut.subset_metrics(chosen, str(config.convention))
        record.update(subsets=subsets, unseen=config.unseen)
    if by_kind is not None:
        record["by_kind"] = by_kind
    atomic_write(Path(config.out) / METRICS, json.dumps(record, indent=2) + "\n")
    return metrics, no_cand, subsets
