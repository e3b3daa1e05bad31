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
  ``(image_id, ref_id, sent_id)`` (one line per sample).
* ``metrics.json``: ``{"dataset", "split", "proposals", "convention", "weights", "method",
  "metrics": {split: {"oIoU", "mIoU", "prec@0.5".."prec@0.9", "n"}}, "num_images",
  "num_samples", "no_candidate"}``, computed from the samples' I and U (int64) with
  `iterprime_jax.metrics.summarize`. A sample without a candidate is a miss, never dropped.
* ``run_config.json``: what the run is (dataset, split, weights, proposals, method config),
  written on first start; a restart with the same ``out`` resumes (finished images are
  skipped) and refuses a different run config.

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
import hashlib
import io
import json
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..cli_args import METHOD_FLAG_FIELDS  # noqa: F401 - re-exported
from ..config import IteRPrimEConfig
from ..method.pipeline import (
    bucket,
    canvas_side,
    encode_texts,
    pad_text,
    prepare_image,
    segment_core,
    text_length_bucket,
)
from ..metrics import CONVENTIONS, summarize
from ..models.blip.modeling import encode_image

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("refcoco_unc", "refcoco+_unc", "refcocog_umd", "refcocog_google",
                             "shapesref")
COCO_DATASETS = frozenset({"refcoco_unc", "refcoco_plus_unc", "refcocog_umd", "refcocog_google"})
COCO_CANVAS = 640
SAMPLES = "samples.jsonl"
METRICS = "metrics.json"
RUN_CONFIG = "run_config.json"
ABLATION = "ablation.json"
METHOD_JSON = "method.json"
RUN_CONFIG_VERSION = 1
MIN_SENTENCE_BUCKET = 4
MIN_PROPOSAL_BUCKET = 4
TINY_CANVAS = 128  # canvases up to this side get a default batch of 8 images

Progress = Callable[[int, int], None]
TRACE_COUNT = {"eval_step": 0, "encode": 0}  # incremented at trace time (tests count compiles)



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
        thresholded heat map) or the path of a COCO-style results JSON of class-agnostic masks.
      out: output directory (samples.jsonl, metrics.json, run_config.json).
      limit: evaluate only the first `limit` images of the split (all their sentences).
      batch_size: images per step (rounded up to a multiple of the local device count);
        default: the device count, or 8 for canvases <= 128.
      canvas: square canvas side for every image (default 640 for COCO datasets, else the
        largest image side of the split rounded up to 64).
      convention: metric convention, "standard" or "iterprime" (`iterprime_jax.metrics`).
      sleep_per_batch: seconds to sleep after every batch (tests: makes a run slow to kill).
      build_shapesref: for dataset shapesref, write the benchmark into `manual_dir` if missing.
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
    convention: str = "standard"
    sleep_per_batch: float = 0.0
    build_shapesref: bool = True

    def replace(self, **kw: Any) -> EvalConfig:
        return dataclasses.replace(self, **kw)


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


@dataclasses.dataclass(frozen=True)
class AblationRow:
    """One row of the ablation table."""

    name: str
    method: IteRPrimEConfig
    use_proposals: bool


# --------------------------------------------------------------------------- method config
def load_method_json(weights_dir: str | Path) -> dict[str, Any]:
    """The optional ``method.json`` of a weights dir: recommended `IteRPrimEConfig` fields."""
    from ..models.checkpoint import CheckpointError
    from ..models.loading import read_method_json

    try:
        return read_method_json(weights_dir)
    except CheckpointError as e:
        raise EvalError(str(e)) from None


def validate_method_config(method: IteRPrimEConfig, num_text_layers: int,
                           max_positions: int | None = None, source: str = "") -> None:
    """Clear errors for a Grad-CAM layer or text length the model cannot serve."""
    where = f" ({source})" if source else ""
    if not 0 <= method.layer < num_text_layers:
        raise EvalError(f"Grad-CAM layer {method.layer} is out of range for a model with "
                        f"{num_text_layers} text layers{where}")
    if method.iterations < 1:
        raise EvalError(f"iterations must be >= 1, got {method.iterations}{where}")
    if max_positions is not None and method.max_text_length > max_positions:
        raise EvalError(f"max_text_length {method.max_text_length} exceeds the model's "
                        f"{max_positions} text positions{where}")


def resolve_method_config(weights_dir: str | Path, num_text_layers: int,
                          cli: IteRPrimEConfig | None = None, explicit: Iterable[str] = (),
                          max_positions: int | None = None) -> IteRPrimEConfig:
    """Method config of a run: `cli` (defaults with the layer clipped to the model's last
    layer when None), overridden by the weights' ``method.json``, overridden in turn by the
    fields in `explicit` (the ones given on the command line)."""
    if cli is None:
        d = IteRPrimEConfig()
        cli = d.replace(layer=min(d.layer, num_text_layers - 1))
    explicit = set(explicit)
    fields = dataclasses.asdict(cli)
    rec = load_method_json(weights_dir)
    fields.update({k: v for k, v in rec.items() if k not in explicit})
    method = IteRPrimEConfig(**fields)
    src = f"{Path(weights_dir) / METHOD_JSON}" if rec else "command line"
    validate_method_config(method, num_text_layers, max_positions, src)
    return method


# --------------------------------------------------------------------------- dataset index
@dataclasses.dataclass(frozen=True)
class RefMeta:
    """One ref (data-source example) of an image."""

    index: int
    ref_id: int
    ann_id: int
    sent_ids: tuple[int, ...]
    sentences: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """One image of the split: its refs (consecutive examples) and sizes."""

    position: int
    image_id: int
    hw: tuple[int, int]
    refs: tuple[RefMeta, ...]
    num_gt_proposals: int

    @property
    def num_sentences(self) -> int:
        return sum(len(r.sent_ids) for r in self.refs)

    def keys(self) -> list[tuple[int, int]]:
        """(ref_id, sent_id) of every sentence, in order."""
        return [(r.ref_id, s) for r in self.refs for s in r.sent_ids]


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _image_hw(encoded: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as im:  # header only
        return int(im.height), int(im.width)


def build_index(light_source: Sequence[dict[str, Any]], name: str = "") -> list[ImageMeta]:
    """Group the examples (one per ref, one image's refs consecutive) into images.

    `light_source` must skip decoding of image / mask / proposals (see `open_split`).
    """
    images: list[ImageMeta] = []
    seen: set[int] = set()
    cur: dict[str, Any] | None = None

    def close() -> None:
        if cur is not None:
            images.append(ImageMeta(position=len(images), image_id=cur["image_id"],
                                    hw=cur["hw"], refs=tuple(cur["refs"]),
                                    num_gt_proposals=cur["n"]))

    for i in range(len(light_source)):
        ex = light_source[i]
        image_id, ref_id = int(ex["image_id"]), int(ex["ref_id"])
        sents = tuple(_text(s) for s in ex["sentences"])
        sent_ids = tuple(int(s) for s in np.asarray(ex["sent_ids"]).reshape(-1))
        if len(sents) != len(sent_ids):
            raise EvalError(f"{name}: ref_id {ref_id} has {len(sents)} sentences but "
                            f"{len(sent_ids)} sent_ids")
        if not sents:
            raise EvalError(f"{name}: ref_id {ref_id} (image {image_id}) has no sentence")
        for s, sid in zip(sents, sent_ids, strict=True):
            if not s.strip():
                raise EvalError(f"{name}: ref_id {ref_id} sent_id {sid} (image {image_id}) "
                                f"has an empty sentence {s!r}")
        ref = RefMeta(index=i, ref_id=ref_id, ann_id=int(ex["ann_id"]), sent_ids=sent_ids,
                      sentences=sents)
        if cur is None or image_id != cur["image_id"]:
            close()
            if image_id in seen:
                raise EvalError(f"{name}: the refs of image {image_id} are not consecutive "
                                "(the data source must be ordered by image)")
            seen.add(image_id)
            cur = {"image_id": image_id, "hw": _image_hw(ex["image"]), "refs": [],
                   "n": int(np.asarray(ex["proposal_ann_ids"]).size)}
        cur["refs"].append(ref)
    close()
    return images


@dataclasses.dataclass
class SplitSources:
    """Three views of one split: full decode, mask only (image/proposals skipped), light."""

    full: Any
    mask_only: Any
    light: Any
    name: str


def ensure_shapesref(manual_dir: str | Path) -> None:
    """Write the default ShapesRef benchmark into `manual_dir` unless a build is there."""
    from ..shapesref import DATASET_DIR, STAMP_FILE, ShapesRefConfig, write_shapesref

    if (Path(manual_dir) / DATASET_DIR / STAMP_FILE).is_file():
        return
    log.info("ShapesRef not found in %s: generating it (default ShapesRefConfig)", manual_dir)
    t0 = time.perf_counter()
    write_shapesref(manual_dir, ShapesRefConfig())
    log.info("ShapesRef written to %s in %.1fs", manual_dir, time.perf_counter() - t0)


def prepare_split(config: EvalConfig) -> None:
    """Build the TFDS split if needed (and the ShapesRef sources if missing)."""
    from tfds_refcoco import canonical_config_name, load_split, make_builder
    from tfds_refcoco.refer import LAYOUTS, ReferFormatError

    name = canonical_config_name(config.dataset)
    if not make_builder(name, config.data_dir).is_prepared():
        if name == "shapesref" and config.build_shapesref:
            ensure_shapesref(config.manual_dir)
        layout = LAYOUTS[name]  # fail with the file's name before TFDS's manual-dir check
        for path, what in ((layout.refs_path(config.manual_dir), "refs pickle"),
                           (layout.instances_path(config.manual_dir), "instances file")):
            if not Path(path).expanduser().is_file():
                raise ReferFormatError(f"{what} not found: {path} (dataset {config.dataset} "
                                       f"is not built in {config.data_dir} either)")
    load_split(name, config.split, config.manual_dir, config.data_dir)


def open_split(config: EvalConfig) -> SplitSources:
    """Open the (prepared) split as random-access data sources."""
    import tensorflow_datasets as tfds

    from tfds_refcoco import canonical_config_name, make_builder

    name = canonical_config_name(config.dataset)
    builder = make_builder(name, config.data_dir)
    if config.split not in builder.info.splits:
        raise EvalError(f"dataset {config.dataset} has no split {config.split!r}; available: "
                        f"{list(builder.info.splits)}")
    skip = tfds.decode.SkipDecoding
    return SplitSources(
        full=builder.as_data_source(config.split),
        mask_only=builder.as_data_source(config.split,
                                         decoders={"image": skip(), "proposals": skip()}),
        light=builder.as_data_source(
            config.split, decoders={"image": skip(), "mask": skip(), "proposals": skip()}),
        name=f"{config.dataset}/{config.split}")


# --------------------------------------------------------------------------- proposals
@dataclasses.dataclass(frozen=True)
class ProposalSource:
    """``gt`` / ``heatmap`` / ``file`` (RLEs per image id, in file order)."""

    kind: str
    path: Path | None = None
    by_image: Mapping[int, list[dict[str, Any]]] | None = None

    @property
    def uses_proposals(self) -> bool:
        return self.kind != "heatmap"

    def count(self, image: ImageMeta) -> int:
        if self.kind == "gt":
            return image.num_gt_proposals
        if self.kind == "file":
            assert self.by_image is not None
            return len(self.by_image.get(image.image_id, ()))
        return 0

    def describe(self) -> Any:
        if self.kind == "file":
            assert self.path is not None
            return {"file": str(self.path), "sha256": _sha256(self.path)}
        return self.kind


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_proposals_file(path: str | Path) -> dict[int, list[dict[str, Any]]]:
    """A COCO-style results JSON of class-agnostic masks -> {image_id: [RLE, ...]}.

    Entries: ``{"image_id": int, "segmentation": {"size": [H, W], "counts": str | list},
    "score": float (optional)}``; order within an image is kept (the ``proposal`` index of a
    sample refers to it).
    """
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"proposals file {path} does not exist")
    try:
        items = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EvalError(f"proposals file {path} is not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise EvalError(f"proposals file {path} must hold a JSON list of results "
                        f"({{'image_id', 'segmentation'}}), got {type(items).__name__}")
    out: dict[int, list[dict[str, Any]]] = {}
    for k, it in enumerate(items):
        if not isinstance(it, dict) or "image_id" not in it or "segmentation" not in it:
            raise EvalError(f"proposals file {path}: entry {k} lacks 'image_id' or "
                            "'segmentation'")
        image_id, seg = it["image_id"], it["segmentation"]
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise EvalError(f"proposals file {path}: entry {k} has a non-integer image_id "
                            f"{image_id!r}")
        size = seg.get("size") if isinstance(seg, dict) else None
        counts = seg.get("counts") if isinstance(seg, dict) else None
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and v > 0 for v in size)
                or not isinstance(counts, str | list)):
            raise EvalError(f"proposals file {path}: entry {k} (image {image_id}) needs an RLE "
                            "segmentation {'size': [H, W], 'counts': str or list}")
        out.setdefault(image_id, []).append({"size": [int(v) for v in size], "counts": counts})
    return out


def decode_rles(rles: Sequence[dict[str, Any]], hw: tuple[int, int], path: Any = "",
                image_id: int = -1) -> np.ndarray:
    """RLE dicts -> (N, H, W) bool; the size must equal the image size `hw`."""
    from tfds_refcoco.refer import decode_segmentation

    masks = np.zeros((len(rles), *hw), bool)
    for k, r in enumerate(rles):
        if tuple(r["size"]) != tuple(hw):
            raise EvalError(f"proposals file {path}: a mask of image {image_id} has size "
                            f"{tuple(r['size'])}, the image is {tuple(hw)}")
        try:
            masks[k] = decode_segmentation(r, *hw).astype(bool)
        except Exception as e:  # noqa: BLE001 - pycocotools raises anything on bad counts
            raise EvalError(f"proposals file {path}: cannot decode a mask of image "
                            f"{image_id}: {e}") from None
    return masks


def proposal_source(spec: str) -> ProposalSource:
    if spec in ("gt", "heatmap"):
        return ProposalSource(spec)
    path = Path(spec).expanduser().resolve()
    return ProposalSource("file", path, load_proposals_file(path))


# --------------------------------------------------------------------------- device side
_JIT_CACHE: dict[Any, Any] = {}  # jitted functions per (kind, configs, canvas, devices)


class _Device:
    """Mesh over the local devices, replicated params, jitted encode / step per config
    (cached per process, so repeated runs and ablation rows reuse compilations)."""

    def __init__(self, model: Any):
        self.devices = jax.local_devices()
        self.mesh = Mesh(np.asarray(self.devices), ("data",))
        self.data = NamedSharding(self.mesh, P("data"))
        self.repl = NamedSharding(self.mesh, P())
        self.bconfig = model.config
        self.params = jax.device_put(model.params, self.repl)
        self._devkey = tuple(d.id for d in self.devices)
        key = ("encode", self.bconfig, self._devkey)
        if key not in _JIT_CACHE:
            _JIT_CACHE[key] = jax.jit(_make_encode(self.bconfig),
                                      in_shardings=(self.repl, self.data),
                                      out_shardings=self.data)
        self.encode = _JIT_CACHE[key]

    @property
    def count(self) -> int:
        return len(self.devices)

    def step(self, method: IteRPrimEConfig, canvas: int) -> Any:
        key = ("step", self.bconfig, method, canvas, self._devkey)
        if key not in _JIT_CACHE:
            _JIT_CACHE[key] = jax.jit(_make_step(self.bconfig, method, canvas),
                                      in_shardings=(self.repl,) + (self.data,) * 11,
                                      out_shardings=self.data)
        return _JIT_CACHE[key]

    def put(self, arrays: Sequence[np.ndarray]) -> list[jax.Array]:
        return [jax.device_put(a, self.data) for a in arrays]


def _make_encode(bconfig: Any) -> Callable[..., Any]:
    def encode(params: Any, pixels: jax.Array) -> jax.Array:
        TRACE_COUNT["encode"] += 1
        return encode_image(params, bconfig, pixels)

    return encode


def _make_step(bconfig: Any, method: IteRPrimEConfig, canvas: int) -> Callable[..., Any]:
    def one(params, embeds, ids, attn, focus, primary, hw, props, valid, ncomp, gt, sref):
        out = segment_core(params, bconfig, method, canvas, embeds[None], ids, attn, focus,
                           primary, hw, props, valid, ncomp)
        g = gt[sref]  # (Sb, canvas, canvas): the referred object's mask per sentence
        inter = jnp.sum(out.mask & g, axis=(1, 2), dtype=jnp.int32)
        union = jnp.sum(out.mask | g, axis=(1, 2), dtype=jnp.int32)
        return (inter, union, out.igrs.iterations.astype(jnp.int32),
                out.index.astype(jnp.int32), out.has_candidate)

    def step(params, *arrays):
        TRACE_COUNT["eval_step"] += 1
        return jax.vmap(one, in_axes=(None,) + (0,) * 11)(params, *arrays)

    return step


# --------------------------------------------------------------------------- host batches
@dataclasses.dataclass
class _HostBatch:
    images: list[ImageMeta]          # real images (dummies excluded)
    primary_words: list[list[str | None]]
    proposal_ids: list[np.ndarray]   # per image: sample "proposal" value of each index
    sentences: int
    pixels: Any
    common: list[Any]                # ids, attn, focus, primary, hw (device arrays)
    props: list[Any]                 # props, valid, ncomp
    no_props: list[Any]              # the same with 0 proposals (heat-map rows)
    gt: list[Any]                    # gt, sref
    truncated: int


class _Loader:
    """Host-side batch preparation (run in a background thread)."""

    def __init__(self, model: Any, device: _Device, sources: SplitSources,
                 proposals: ProposalSource, text_config: IteRPrimEConfig, canvas: int,
                 proposal_bucket: int, batch_size: int, need_props: bool, need_no_props: bool):
        self.model, self.device, self.sources = model, device, sources
        self.proposals, self.text_config, self.canvas = proposals, text_config, canvas
        self.nb, self.batch_size = proposal_bucket, batch_size
        self.need_props, self.need_no_props = need_props, need_no_props

    def _image(self, meta: ImageMeta) -> dict[str, Any]:
        first = self.sources.full[meta.refs[0].index]
        if int(first["image_id"]) != meta.image_id:
            raise EvalError(f"{self.sources.name}: example {meta.refs[0].index} is image "
                            f"{first['image_id']}, the index says {meta.image_id}")
        gts = [first["mask"]] + [self.sources.mask_only[r.index]["mask"] for r in meta.refs[1:]]
        props, ids = None, np.zeros((0,), np.int64)
        if self.proposals.kind == "gt":
            props, ids = first["proposals"], np.asarray(first["proposal_ann_ids"], np.int64)
        elif self.proposals.kind == "file":
            assert self.proposals.by_image is not None
            rles = self.proposals.by_image.get(meta.image_id, [])
            props = decode_rles(rles, meta.hw, self.proposals.path, meta.image_id)
            ids = np.arange(len(rles), dtype=np.int64)
        image = first["image"]
        if tuple(image.shape[:2]) != meta.hw:
            raise EvalError(f"{self.sources.name}: image {meta.image_id} decodes to "
                            f"{image.shape[:2]}, its header says {meta.hw}")
        prep = prepare_image(image, self.model.config, props if self.need_props else None,
                             self.canvas, self.nb)
        sentences = [s for r in meta.refs for s in r.sentences]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is counted and logged once
            text = encode_texts(self.model, sentences, self.text_config)
        sref = np.concatenate([np.full(len(r.sent_ids), k, np.int32)
                               for k, r in enumerate(meta.refs)])
        return {"prep": prep, "gts": gts, "text": text, "sref": sref, "ids": ids}

    def make(self, metas: list[ImageMeta]) -> _HostBatch:
        items = [self._image(m) for m in metas]
        b = self.batch_size
        sb = bucket(max(m.num_sentences for m in metas), MIN_SENTENCE_BUCKET)
        c = self.canvas
        rows = [items[min(k, len(items) - 1)] for k in range(b)]  # dummies repeat the last
        tl = max(text_length_bucket(it["text"].attention_mask, it["text"].input_ids.shape[1])
                 for it in items)
        texts = [pad_text(it["text"], sb, tl) for it in rows]
        common = [np.stack([t[j] for t in texts]) for j in range(4)]
        common.append(np.asarray([it["prep"].hw for it in rows], np.int32))
        pixels = np.stack([it["prep"].pixels for it in rows])
        gt = np.zeros((b, sb, c, c), bool)
        sref = np.zeros((b, sb), np.int32)
        for k, it in enumerate(rows):
            for r, m in enumerate(it["gts"]):
                gt[k, r, : m.shape[0], : m.shape[1]] = m.astype(bool)
            sref[k, : len(it["sref"])] = it["sref"]
        d = self.device
        props = no_props = []
        if self.need_props:
            props = d.put([np.stack([it["prep"].proposals for it in rows]),
                           np.stack([it["prep"].proposal_valid for it in rows]),
                           np.stack([it["prep"].num_components for it in rows])])
        if self.need_no_props:
            no_props = d.put([np.zeros((b, 0, c, c), bool), np.zeros((b, 0), bool),
                              np.zeros((b, 0), np.int32)])
        return _HostBatch(
            images=list(metas),
            primary_words=[[t.primary_word for t in it["text"].items] for it in items],
            proposal_ids=[it["ids"] for it in items],
            sentences=sum(m.num_sentences for m in metas),
            pixels=d.put([pixels])[0], common=d.put(common), props=props, no_props=no_props,
            gt=d.put([gt, sref]),
            truncated=sum(t.truncated for it in items for t in it["text"].items))


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class _Prefetch:
    """Runs `make(batch)` for every batch in a background thread, `depth` batches ahead."""

    def __init__(self, make: Callable[[Any], Any], batches: Sequence[Any], depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, list(batches)),
                                        name="eval-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[Any], Any], batches: list[Any]) -> None:
        try:
            for b in batches:
                if self._stop.is_set() or not self._put(make(b)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# --------------------------------------------------------------------------- samples files
def sample_key(rec: Mapping[str, Any]) -> tuple[int, int]:
    """Identity of a sample: (ref_id, sent_id)."""
    return int(rec["ref_id"]), int(rec["sent_id"])


def sort_key(rec: Mapping[str, Any]) -> tuple[int, int, int]:
    """The stable order of samples.jsonl: (image_id, ref_id, sent_id)."""
    return int(rec["image_id"]), int(rec["ref_id"]), int(rec["sent_id"])


def truncate_partial_line(path: Path) -> int:
    """Cut a half-written last line (no trailing newline) off `path`; returns bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("r+b") as f:
        tail = min(size, 1 << 16)
        keep = None
        pos = size
        while pos > 0 and keep is None:
            start = max(0, pos - tail)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
            pos = start
        keep = keep or 0
        if keep < size:
            f.truncate(keep)
    return size - keep


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The samples of one jsonl file; an unparsable last line (a run killed mid-write) is
    ignored, an unparsable line elsewhere is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            sample_key(rec), sort_key(rec), int(rec["I"]), int(rec["U"])
        except (ValueError, KeyError, TypeError) as e:
            if n == len(lines) - 1:  # partial last line
                continue
            raise EvalError(f"{path}: line {n + 1} is not a sample: {e}") from None
        out.append(rec)
    return out


def _sample_files(out: Path) -> list[Path]:
    return [out / SAMPLES, *sorted(out.glob("samples.p*.jsonl"))]


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _dumps(rec: Mapping[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False)


def merge_samples(out: Path) -> list[dict[str, Any]]:
    """Union of samples.jsonl and samples.p*.jsonl (later files win on duplicate keys),
    rewritten sorted to samples.jsonl; the per-process files are removed."""
    files = _sample_files(out)
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for f in files:
        for rec in read_samples(f):
            merged[sample_key(rec)] = rec
    recs = sorted(merged.values(), key=sort_key)
    _atomic_write(out / SAMPLES, "".join(_dumps(r) + "\n" for r in recs))
    for f in files[1:]:
        f.unlink(missing_ok=True)
    return recs


# --------------------------------------------------------------------------- run config
def _weights_fingerprint(path: Path) -> str:
    """sha256 over the checkpoint's config file and the names and sizes of its files."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel in (METHOD_JSON,) or rel.startswith("training_log"):
            continue
        h.update(f"{rel}:{f.stat().st_size}\n".encode())
        if f.suffix == ".json" and f.stat().st_size < (1 << 20):
            h.update(f.read_bytes())
    return h.hexdigest()


def run_identity(config: EvalConfig, method: IteRPrimEConfig, proposals: ProposalSource,
                 weights: Path) -> dict[str, Any]:
    from tfds_refcoco import canonical_config_name

    return {
        "version": RUN_CONFIG_VERSION,
        "dataset": canonical_config_name(config.dataset),
        "split": config.split,
        "weights": str(weights),
        "weights_fingerprint": _weights_fingerprint(weights),
        "proposals": proposals.describe(),
        "method": dataclasses.asdict(method),
    }


def check_run_config(out: Path, identity: Mapping[str, Any], write: bool) -> bool:
    """Compare with ``out/run_config.json`` (EvalError on a difference); write it if missing
    and `write`. Returns whether a previous run config was found."""
    path = out / RUN_CONFIG
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise EvalError(f"{path} is not valid JSON ({e}); remove it or use another --out") \
                from None
        diff = [k for k in identity if old.get(k) != identity[k]]
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {identity[k]!r}" for k in diff)
            raise EvalError(f"{out} holds a run with a different configuration ({details}); "
                            "use another --out or remove it to start over")
        return True
    if write:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(dict(identity), indent=2) + "\n")
    return False


# --------------------------------------------------------------------------- the driver
def default_batch_size(num_devices: int, canvas: int) -> int:
    base = 8 if canvas <= TINY_CANVAS else 1
    return round_up(max(base, num_devices), num_devices)


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """`jax.distributed.initialize` (arguments left to cluster auto-detection when None)."""
    kw = {k: v for k, v in (("coordinator_address", coordinator),
                            ("num_processes", num_processes), ("process_id", process_id))
          if v is not None}
    jax.distributed.initialize(**kw)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass
class _Context:
    config: EvalConfig
    model: Any
    device: _Device
    sources: SplitSources
    images: list[ImageMeta]          # every image of the run (all processes)
    proposals: ProposalSource
    canvas: int
    batch_size: int
    weights: Path


def load_model(config: EvalConfig, model: Any) -> tuple[Any, Path]:
    from ..models.loading import load

    weights = Path(config.weights).expanduser().resolve()
    if model is None:
        if not weights.is_dir():
            hint = (" (train it with `python -m iterprime_jax.training --out "
                    f"{config.weights}`)" if "shapesref" in config.weights else "")
            raise EvalError(f"weights directory {config.weights} does not exist{hint}")
        model = load(weights)
    return model, weights


def _model_and_method(config: EvalConfig, model: Any, method: IteRPrimEConfig | None
                      ) -> tuple[Any, Path, IteRPrimEConfig]:
    """The model (loaded unless given), its directory and the validated method config."""
    model, weights = load_model(config, model)
    tc = model.config.text
    if method is None:
        method = resolve_method_config(weights, tc.num_hidden_layers,
                                       max_positions=tc.max_position_embeddings)
    validate_method_config(method, tc.num_hidden_layers, tc.max_position_embeddings)
    return model, weights, method


def _context(config: EvalConfig, model: Any, proposals: ProposalSource, weights: Path
             ) -> _Context:
    if config.dataset not in DATASETS and config.dataset != "refcoco_plus_unc":
        raise EvalError(f"unknown dataset {config.dataset!r}; one of {DATASETS}")
    if config.convention not in CONVENTIONS:
        raise EvalError(f"convention must be one of {CONVENTIONS}, got {config.convention!r}")
    if config.limit is not None and config.limit < 1:
        raise EvalError(f"limit must be >= 1, got {config.limit}")
    from tfds_refcoco import canonical_config_name

    # Process 0 builds the dataset (one writer), the others open it after a barrier.
    if jax.process_index() == 0:
        prepare_split(config)
    _barrier("iterprime_eval_dataset_ready")
    sources = open_split(config)
    t0 = time.perf_counter()
    images = build_index(sources.light, sources.name)
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
    device = _Device(model)
    bs = config.batch_size or default_batch_size(device.count, canvas)
    if bs < 1:
        raise EvalError(f"batch_size must be >= 1, got {bs}")
    if bs % device.count:
        log.info("batch size %d rounded up to %d (a multiple of %d local devices)", bs,
                 round_up(bs, device.count), device.count)
        bs = round_up(bs, device.count)
    if proposals.kind == "file":
        missing = sum(m.image_id not in proposals.by_image for m in images)  # type: ignore
        if missing:
            log.warning("%d of %d images have no entry in %s: their %d sentences get no "
                        "proposal (counted as misses, no candidate)", missing, len(images),
                        proposals.path, sum(m.num_sentences for m in images
                                            if m.image_id not in proposals.by_image))  # type: ignore
    return _Context(config, model, device, sources, images, proposals, canvas, bs, weights)


def _my_images(images: list[ImageMeta]) -> list[ImageMeta]:
    pc, pi = jax.process_count(), jax.process_index()
    return [m for m in images if m.position % pc == pi]


def _batches(images: list[ImageMeta], size: int) -> list[list[ImageMeta]]:
    return [images[i: i + size] for i in range(0, len(images), size)]


def _run_batches(ctx: _Context, images: list[ImageMeta], rows: Sequence[AblationRow],
                 on_batch: Callable[[_HostBatch, list[tuple[np.ndarray, ...]]], None]) -> int:
    """Prefetch + device loop over `images`; calls `on_batch(batch, outputs per row)`."""
    if not images:
        return 0
    text_keys = {(r.method.use_template, r.method.template, r.method.max_text_length,
                  r.method.spacy_model) for r in rows}
    if len(text_keys) != 1:
        raise EvalError("rows of one run must share the text settings")
    nb = 0
    if any(r.use_proposals for r in rows):
        nb = bucket(max(ctx.proposals.count(m) for m in images), MIN_PROPOSAL_BUCKET)
    loader = _Loader(ctx.model, ctx.device, ctx.sources, ctx.proposals, rows[0].method,
                     ctx.canvas, nb, ctx.batch_size,
                     need_props=any(r.use_proposals for r in rows),
                     need_no_props=any(not r.use_proposals for r in rows))
    prefetch = _Prefetch(loader.make, _batches(images, ctx.batch_size))
    truncated = 0
    try:
        for hb in prefetch:
            embeds = ctx.device.encode(ctx.device.params, hb.pixels)
            outs: dict[tuple[IteRPrimEConfig, bool], Any] = {}
            for r in rows:  # identical rows (e.g. "full" = "+ IGRS (3)") run once
                if (r.method, r.use_proposals) not in outs:
                    step = ctx.device.step(r.method, ctx.canvas)
                    props = hb.props if r.use_proposals else hb.no_props
                    outs[r.method, r.use_proposals] = step(ctx.device.params, embeds,
                                                           *hb.common, *props, *hb.gt)
            host = {k: tuple(np.asarray(a) for a in jax.device_get(o)) for k, o in outs.items()}
            truncated += hb.truncated
            on_batch(hb, [host[r.method, r.use_proposals] for r in rows])
            if ctx.config.sleep_per_batch > 0:
                time.sleep(ctx.config.sleep_per_batch)
    finally:
        prefetch.close()
    if truncated:
        log.warning("%d sentences were longer than max_text_length=%d tokens and were "
                    "truncated", truncated, rows[0].method.max_text_length)
    return truncated


def _sample_records(hb: _HostBatch, out: tuple[np.ndarray, ...]) -> list[list[dict[str, Any]]]:
    inter, union, iters, index, has = out
    per_image = []
    for k, meta in enumerate(hb.images):
        recs, s = [], 0
        ids = hb.proposal_ids[k]
        for ref in meta.refs:
            for sid, sent in zip(ref.sent_ids, ref.sentences, strict=True):
                i, u = int(inter[k, s]), int(union[k, s])
                j = int(index[k, s])
                recs.append({
                    "image_id": meta.image_id, "ref_id": ref.ref_id, "ann_id": ref.ann_id,
                    "sent_id": sid, "sentence": sent, "I": i, "U": u,
                    "IoU": i / u if u > 0 else 0.0, "iterations": int(iters[k, s]),
                    "primary_word": hb.primary_words[k][s],
                    "proposal": int(ids[j]) if 0 <= j < len(ids) else -1,
                    "has_candidate": bool(has[k, s]),
                })
                s += 1
        per_image.append(recs)
    return per_image


def evaluate(config: EvalConfig = EvalConfig(), method: IteRPrimEConfig | None = None, *,
             model: Any = None, progress: Progress | None = None) -> EvalResult:
    """Evaluate one split (resumable; see the module docstring).

    Args:
      config: what to run and where to write.
      method: the method config; None: `resolve_method_config` defaults (the weights'
        ``method.json`` over the paper's defaults, layer clipped to the model).
      model: an already loaded `iterprime_jax.Model` (else loaded from `config.weights`).
      progress: called as ``progress(done, total)`` (sentences of this process) at the start
        and after every batch.
    """
    t_start = time.perf_counter()
    model, weights, method = _model_and_method(config, model, method)
    proposals = proposal_source(config.proposals)
    out = Path(config.out)
    identity = run_identity(config, method, proposals, weights)
    pi, pc = jax.process_index(), jax.process_count()
    resumed = False
    if pi == 0:  # one writer; the others check once the dataset barrier has passed
        resumed = check_run_config(out, identity, write=True)
    ctx = _context(config, model, proposals, weights)
    if pi != 0:
        resumed = check_run_config(out, identity, write=False)
    out.mkdir(parents=True, exist_ok=True)
    own = out / (SAMPLES if pc == 1 else f"samples.p{pi}.jsonl")
    cut = truncate_partial_line(own)
    if cut:
        log.warning("%s: removed a half-written last line (%d bytes)", own, cut)
    done: set[tuple[int, int]] = set()
    for f in _sample_files(out):
        done.update(sample_key(r) for r in read_samples(f))
    mine = _my_images(ctx.images)
    todo = [m for m in mine if not all(k in done for k in m.keys())]
    total = sum(m.num_sentences for m in mine)
    finished = total - sum(m.num_sentences for m in todo)
    if resumed and finished:
        log.info("resuming in %s: %d of %d images (%d sentences) of this process already "
                 "done", out, len(mine) - len(todo), len(mine), finished)
    log.info("process %d/%d: %d images, %d sentences to go; canvas %d, %d images per step "
             "over %d local device(s), proposals %s, method %s", pi, pc, len(todo),
             total - finished, ctx.canvas, ctx.batch_size, ctx.device.count, proposals.kind,
             method)
    if progress:
        progress(finished, total)
    computed = 0
    row = AblationRow("main", method, proposals.uses_proposals)
    with own.open("a", encoding="utf-8") as fh:
        def on_batch(hb: _HostBatch, outs: list[tuple[np.ndarray, ...]]) -> None:
            nonlocal finished, computed
            for recs in _sample_records(hb, outs[0]):
                fh.write("".join(_dumps(r) + "\n" for r in recs))
                fh.flush()
            finished += hb.sentences
            computed += hb.sentences
            if progress:
                progress(finished, total)

        _run_batches(ctx, todo, [row], on_batch)
    _barrier("iterprime_eval_samples_written")
    result_metrics, no_cand = None, None
    n_samples = sum(m.num_sentences for m in ctx.images)
    if pi == 0:
        recs = merge_samples(out)
        result_metrics, no_cand = _write_metrics(config, ctx, method, proposals, recs)
    elapsed = time.perf_counter() - t_start
    log.info("process %d: %d samples computed in %.1fs", pi, computed, elapsed)
    return EvalResult(metrics=result_metrics, num_images=len(ctx.images),
                      num_samples=n_samples, no_candidate=no_cand, computed=computed,
                      elapsed_s=elapsed, out=out)


def metrics_from_samples(recs: Iterable[Mapping[str, Any]], convention: str = "standard"
                         ) -> dict[str, float | int]:
    """`summarize` over the I and U of sample records (int64)."""
    recs = list(recs)
    i = np.asarray([int(r["I"]) for r in recs], np.int64)
    u = np.asarray([int(r["U"]) for r in recs], np.int64)
    return summarize(i, u, convention=convention)  # type: ignore[arg-type]


def _write_metrics(config: EvalConfig, ctx: _Context, method: IteRPrimEConfig,
                   proposals: ProposalSource, recs: list[dict[str, Any]]
                   ) -> tuple[dict[str, dict[str, float | int]], int]:
    by_key = {sample_key(r): r for r in recs}
    wanted = [k for m in ctx.images for k in m.keys()]
    missing = [k for k in wanted if k not in by_key]
    if missing:
        raise EvalError(f"{len(missing)} samples are missing from {config.out} after the run "
                        f"(e.g. ref_id/sent_id {missing[0]}); did a process fail?")
    chosen = sorted((by_key[k] for k in wanted), key=sort_key)
    metrics = {config.split: metrics_from_samples(chosen, config.convention)}
    no_cand = sum(not r["has_candidate"] for r in chosen) if proposals.uses_proposals else 0
    record = {
        "dataset": config.dataset, "split": config.split, "proposals": proposals.describe(),
        "convention": config.convention, "weights": str(ctx.weights),
        "method": dataclasses.asdict(method), "metrics": metrics,
        "num_images": len(ctx.images), "num_samples": len(chosen), "no_candidate": no_cand,
    }
    _atomic_write(Path(config.out) / METRICS, json.dumps(record, indent=2) + "\n")
    return metrics, no_cand


# --------------------------------------------------------------------------- ablation
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
                 model: Any = None, progress: Progress | None = None
                 ) -> dict[str, dict[str, float | int]] | None:
    """Every `ablation_rows` config on the same images (embeddings and inputs shared); writes
    ``out/ablation.json`` and returns ``{row name: summarize(...)}`` (None on processes > 0).

    Proposal rows use ``config.proposals`` (``gt`` when it is ``heatmap``). Not resumable.
    """
    t_start = time.perf_counter()
    model, weights, method = _model_and_method(config, model, method)
    if config.proposals == "heatmap":
        config = config.replace(proposals="gt")
    proposals = proposal_source(config.proposals)
    ctx = _context(config, model, proposals, weights)
    rows = ablation_rows(method)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    pi, pc = jax.process_index(), jax.process_count()
    mine = _my_images(ctx.images)
    total, done = sum(m.num_sentences for m in mine), 0
    counts: dict[str, list[list[int]]] = {r.name: [] for r in rows}
    if progress:
        progress(0, total)

    def on_batch(hb: _HostBatch, outs: list[tuple[np.ndarray, ...]]) -> None:
        nonlocal done
        for r, o in zip(rows, outs, strict=True):
            for recs in _sample_records(hb, o):
                counts[r.name] += [[*sort_key(x), x["I"], x["U"]] for x in recs]
        done += hb.sentences
        if progress:
            progress(done, total)

    _run_batches(ctx, mine, rows, on_batch)
    part = out / f"ablation.p{pi}.json"
    _atomic_write(part, json.dumps(counts))
    _barrier("iterprime_ablation_written")
    if pi != 0:
        return None
    merged: dict[str, list[list[int]]] = {r.name: [] for r in rows}
    for p in range(pc):
        f = out / f"ablation.p{p}.json"
        for name, v in json.loads(f.read_text()).items():
            merged[name] += v
        f.unlink()
    table: dict[str, dict[str, float | int]] = {}
    for r in rows:
        v = sorted(merged[r.name])
        table[r.name] = summarize(np.asarray([x[3] for x in v], np.int64),
                                  np.asarray([x[4] for x in v], np.int64),
                                  convention=config.convention)  # type: ignore[arg-type]
    record = {
        "dataset": config.dataset, "split": config.split, "proposals": proposals.describe(),
        "convention": config.convention, "weights": str(weights),
        "num_images": len(ctx.images), "num_samples": sum(m.num_sentences for m in ctx.images),
        "rows": [{"name": r.name, "proposals": proposals.describe() if r.use_proposals
                  else "heatmap", "method": dataclasses.asdict(r.method),
                  "metrics": table[r.name]} for r in rows],
    }
    _atomic_write(out / ABLATION, json.dumps(record, indent=2) + "\n")
    log.info("ablation: %d rows over %d sentences in %.1fs", len(rows), record["num_samples"],
             time.perf_counter() - t_start)
    return table
