"""Host side of an evaluation: a batch of images prepared for the device (`Loader.make`: decode,
proposals, spaCy + tokenisation, padding to the buckets) and the background thread that
prepares the next batches while the device runs the current one (`Prefetch`).

Proposals computed on the fly by Mask2Former stay on the devices: they are laid out on the
canvas and their connected components counted there (`proposals_on_canvas`); they come to the
host only to be saved (``save_proposals``)."""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..config import IteRPrimEConfig
from ..method.language import TextBatch
from ..method.pipeline import (
    PreparedImage,
    ProposalArrays,
    TextArrays,
    bucket,
    encode_texts,
    pad_text,
    prepare_image,
    text_length_bucket,
)
from ..method.select import count_components_device
from ..models.loading import Model
from .config import MIN_SENTENCE_BUCKET, EvalError
from .device import Device, GroundTruth, StepInputs
from .index import ImageMeta, SplitSources
from .proposals import ProposalSource, decode_rles


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """One batch of B images (the last real one repeated to fill the batch) prepared for the
    devices: metadata on the host, arrays already on the mesh (sharded over the image axis).

    images: the real images (dummies excluded); primary_words / truncated_at: per real image
    and sentence; proposal_ids: per real image, the sample "proposal" value of each proposal
    index; sentences: real sentences; pixels (B, S, S, 3); text: (B, Sb, T) arrays;
    image_hw (B, 2) int32; proposals (B, P, canvas, canvas) (None when no row uses them);
    no_proposals: the same with P = 0 (heat-map rows; None when no row needs them); gt: the
    referred masks; truncated: sentences cut to max_text_length; proposal_rles: per real
    image, the computed proposals as RLE (``save_proposals`` only)."""

    images: list[ImageMeta]
    primary_words: list[list[str | None]]
    proposal_ids: list[np.ndarray]
    sentences: int
    pixels: jax.Array
    text: TextArrays
    image_hw: jax.Array
    proposals: ProposalArrays | None
    no_proposals: ProposalArrays | None
    gt: GroundTruth
    truncated: int
    truncated_at: list[list[bool]] = dataclasses.field(default_factory=list)
    proposal_rles: list[list[dict[str, Any]]] | None = None

    def step_inputs(self, image_embeds: jax.Array, use_proposals: bool) -> StepInputs:
        """The `Device.step` inputs of a row with (or without) proposals; image_embeds
        (B, S, D) from `Device.encode`."""
        props = self.proposals if use_proposals else self.no_proposals
        if props is None:
            raise ValueError(f"this batch was prepared without the arrays of a row with "
                             f"use_proposals={use_proposals}")
        return StepInputs(image_embeds, self.text, self.image_hw, props, self.gt)


@dataclasses.dataclass(frozen=True)
class _Image:
    """Host-side inputs of one image of a batch (`Loader._image`)."""

    prep: PreparedImage
    gts: list[np.ndarray]        # the referred masks, one per ref, (H, W)
    text: TextBatch
    sentence_ref: np.ndarray     # (sentences,) int32: the ref of each sentence
    ids: np.ndarray              # the sample "proposal" value of each proposal index


def _on_canvas(masks: jax.Array, canvas: int, n_padded: int) -> tuple[jax.Array, jax.Array]:
    """(b, Q, Ho, Wo) bool -> ((b, n_padded, canvas, canvas) masks, (b, n_padded) component
    counts); the masks are zero outside their image, which fits on the canvas."""
    q = masks.shape[1]
    m = masks[:, :, :canvas, :canvas]
    components = count_components_device(m)
    pads = ((0, 0), (0, n_padded - q), (0, canvas - m.shape[2]), (0, canvas - m.shape[3]))
    return jnp.pad(m, pads), jnp.pad(components, pads[:2])


@functools.partial(jax.jit, static_argnums=(2, 3))
def _arrange(groups: tuple[jax.Array, ...], rows: jax.Array, canvas: int, n_padded: int
             ) -> tuple[jax.Array, jax.Array]:
    """The proposer's groups of masks, each (b_g, Q, Ho_g, Wo_g) bool -> masks
    (R, n_padded, canvas, canvas) and component counts (R, n_padded) of the rows `rows` (R,)
    int32, indices into the groups' rows laid end to end. One jitted call per batch: no
    per-row indexing outside jit (each of those would send its index to the device)."""
    placed = [_on_canvas(m, canvas, n_padded) for m in groups]
    masks = jnp.concatenate([m for m, _ in placed])
    components = jnp.concatenate([c for _, c in placed])
    return jnp.take(masks, rows, axis=0), jnp.take(components, rows, axis=0)


def proposals_on_canvas(groups: Sequence[tuple[list[int], Any, jax.Array]], rows: Sequence[int],
                        canvas: int, n_padded: int, sharding: Any) -> ProposalArrays:
    """`Proposer.device_masks` groups -> `ProposalArrays`: masks (R, n_padded, canvas, canvas),
    valid (R, n_padded), component counts (R, n_padded) for the images `rows` (indices into the
    proposer's images; repeats allowed), placed with `sharding`; the masks never leave the
    devices (the row indices and the validity row are the only host -> device transfers)."""
    position: dict[int, int] = {}
    offset = q = 0
    for idx, _, masks in groups:
        q = masks.shape[1]
        if q > n_padded:
            raise EvalError(f"{q} proposals per image exceed the proposal bucket {n_padded}")
        for k, i in enumerate(idx):
            position[i] = offset + k
        offset += masks.shape[0]
    group_arrays = tuple(m for _, _, m in groups)
    where = group_arrays[0].sharding
    take = jax.device_put(np.asarray([position[i] for i in rows], np.int32), where)
    masks, components = _arrange(group_arrays, take, canvas, n_padded)
    valid = np.broadcast_to(np.arange(n_padded) < q, (len(rows), n_padded))
    return jax.device_put(ProposalArrays(masks, valid, components), sharding)


class Loader:
    """Host-side batch preparation (run in a background thread)."""

    def __init__(self, model: Model, device: Device, sources: SplitSources,
                 proposals: ProposalSource, text_config: IteRPrimEConfig, canvas: int,
                 proposal_bucket: int, batch_size: int, need_props: bool, need_no_props: bool,
                 save_proposals: bool = False):
        self.model, self.device, self.sources = model, device, sources
        self.save_proposals = save_proposals
        self.proposals, self.text_config, self.canvas = proposals, text_config, canvas
        self.proposal_bucket, self.batch_size = proposal_bucket, batch_size
        self.need_props, self.need_no_props = need_props, need_no_props

    def _first(self, meta: ImageMeta) -> Any:
        """The image's first example (image, proposals, its first referred mask)."""
        first = self.sources.full[meta.refs[0].index]
        if int(first["image_id"]) != meta.image_id:
            raise EvalError(f"{self.sources.name}: example {meta.refs[0].index} is image "
                            f"{first['image_id']}, the index says {meta.image_id}")
        return first

    def _image(self, meta: ImageMeta, first: Any) -> _Image:
        gts = [first["mask"]] + [self.sources.mask_only[r.index]["mask"] for r in meta.refs[1:]]
        props, ids = None, np.zeros((0,), np.int64)
        if self.proposals.kind == "gt":
            props, ids = first["proposals"], np.asarray(first["proposal_ann_ids"], np.int64)
        elif self.proposals.kind == "file":
            assert self.proposals.by_image is not None
            rles = self.proposals.by_image.get(meta.image_id, [])
            props = decode_rles(rles, meta.hw, self.proposals.path, meta.image_id)
            ids = np.arange(len(rles), dtype=np.int64)
        elif self.proposals.kind == "mask2former":  # on the devices (`proposals_on_canvas`)
            ids = np.arange(self.proposals.proposer.num_queries, dtype=np.int64)
        image = first["image"]
        if tuple(image.shape[:2]) != meta.hw:
            raise EvalError(f"{self.sources.name}: image {meta.image_id} decodes to "
                            f"{image.shape[:2]}, its header says {meta.hw}")
        prep = prepare_image(image, self.model.config, props if self.need_props else None,
                             self.canvas, self.proposal_bucket)
        sentences = [s for r in meta.refs for s in r.sentences]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is counted and logged once
            text = encode_texts(self.model, sentences, self.text_config)
        sentence_ref = np.concatenate([np.full(len(r.sent_ids), k, np.int32)
                                       for k, r in enumerate(meta.refs)])
        return _Image(prep=prep, gts=gts, text=text, sentence_ref=sentence_ref, ids=ids)

    def make(self, metas: list[ImageMeta]) -> HostBatch:
        """The `HostBatch` of `metas` (at most `batch_size` images)."""
        firsts = [self._first(m) for m in metas]
        on_device, rles = self._mask2former(firsts)
        items = [self._image(m, f) for m, f in zip(metas, firsts, strict=True)]
        rows = [items[min(k, len(items) - 1)] for k in range(self.batch_size)]  # dummies
        n_sentences = bucket(max(m.num_sentences for m in metas), MIN_SENTENCE_BUCKET)
        d = self.device
        return HostBatch(
            images=list(metas),
            primary_words=[[t.primary_word for t in it.text.items] for it in items],
            proposal_ids=[it.ids for it in items],
            sentences=sum(m.num_sentences for m in metas),
            pixels=d.put(np.stack([it.prep.pixels for it in rows])),
            text=d.put(_texts(items, rows, n_sentences)),
            image_hw=d.put(np.asarray([it.prep.hw for it in rows], np.int32)),
            proposals=on_device if on_device is not None else self._proposals(rows),
            no_proposals=self._no_proposals(),
            gt=d.put(_ground_truth(rows, n_sentences, self.canvas)),
            truncated=sum(t.truncated for it in items for t in it.text.items),
            truncated_at=[[t.truncated for t in it.text.items] for it in items],
            proposal_rles=rles)

    def _mask2former(self, firsts: list[Any]
                     ) -> tuple[ProposalArrays | None, list[list[dict[str, Any]]] | None]:
        """Proposals computed by Mask2Former on the devices (`proposals_on_canvas`) and, with
        ``save_proposals``, their RLEs per image; (None, None) for other proposal kinds."""
        if self.proposals.kind != "mask2former" or not self.need_props:
            return None, None
        groups = self.proposals.proposer.device_masks([f["image"] for f in firsts])
        on_device = proposals_on_canvas(
            groups, [min(k, len(firsts) - 1) for k in range(self.batch_size)], self.canvas,
            self.proposal_bucket, self.device.data)
        if not self.save_proposals:
            return on_device, None
        from .proposer import encode_masks

        rles: list[Any] = [None] * len(firsts)
        for idx, hws, masks in groups:
            host = np.asarray(jax.device_get(masks))
            for k, i in enumerate(idx):
                rles[i] = encode_masks(host[k, :, : hws[k][0], : hws[k][1]])
        return on_device, rles

    def _proposals(self, rows: list[_Image]) -> ProposalArrays | None:
        """The rows' padded proposals on the mesh (None when no row uses proposals)."""
        if not self.need_props:
            return None
        return self.device.put(ProposalArrays(*(np.stack(a) for a in zip(
            *(it.prep.proposal_arrays for it in rows), strict=True))))

    def _no_proposals(self) -> ProposalArrays | None:
        """Zero proposals per image (the heat-map rows) on the mesh, when a row needs them."""
        if not self.need_no_props:
            return None
        b, c = self.batch_size, self.canvas
        return self.device.put(ProposalArrays(np.zeros((b, 0, c, c), bool),
                                              np.zeros((b, 0), bool), np.zeros((b, 0), np.int32)))


def _texts(items: list[_Image], rows: list[_Image], n_sentences: int) -> TextArrays:
    """(B, n_sentences, T) text arrays of the batch's rows, T the longest prompt's bucket over
    the real images."""
    length = max(text_length_bucket(it.text.attention_mask, it.text.input_ids.shape[1])
                 for it in items)
    texts = [pad_text(it.text, n_sentences, length) for it in rows]
    return TextArrays(*(np.stack(a) for a in zip(*texts, strict=True)))


def _ground_truth(rows: list[_Image], n_sentences: int, canvas: int) -> GroundTruth:
    """The rows' referred masks on the canvas (B, n_sentences, canvas, canvas) (at most one
    ref per sentence) and the ref of each sentence (B, n_sentences)."""
    gt = np.zeros((len(rows), n_sentences, canvas, canvas), bool)
    sentence_ref = np.zeros((len(rows), n_sentences), np.int32)
    for k, it in enumerate(rows):
        for r, m in enumerate(it.gts):
            gt[k, r, : m.shape[0], : m.shape[1]] = m.astype(bool)
        sentence_ref[k, : len(it.sentence_ref)] = it.sentence_ref
    return GroundTruth(gt, sentence_ref)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class Prefetch:
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
