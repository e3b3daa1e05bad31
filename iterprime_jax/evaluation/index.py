"""The dataset side of an evaluation: building / opening a `tfds_refcoco` split (a registered
dataset's raw sources are prepared first, `datasets`) and the split index (`build_index`: one
image's refs are consecutive examples) without decoding images. A PhraseCut task is indexed as
a ref with one sentence (see `iterprime_jax.evaluation.phrasecut`)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import phrasecut
from .config import PHRASECUT, EvalConfig, EvalError
from .datasets import dataset_hooks

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RefMeta:
    """One ref (data-source example) of an image."""

    index: int
    ref_id: int
    ann_id: int
    sent_ids: tuple[int, ...]
    sentences: tuple[str, ...]
    extra: tuple[tuple[str, Any], ...] = ()  # added to every sample record (PhraseCut task)


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
        task = "task_id" in ex  # PhraseCut: one phrase per task
        image_id = int(ex["image_id"])
        ref_id = int(ex["task_index"] if task else ex["ref_id"])
        text = phrasecut.as_text
        sents = (text(ex["phrase"]),) if task else tuple(text(s) for s in ex["sentences"])
        sent_ids = (0,) if task else tuple(int(s) for s in np.asarray(ex["sent_ids"]).reshape(-1))
        if len(sents) != len(sent_ids):
            raise EvalError(f"{name}: ref_id {ref_id} has {len(sents)} sentences but "
                            f"{len(sent_ids)} sent_ids")
        if not sents:
            raise EvalError(f"{name}: ref_id {ref_id} (image {image_id}) has no sentence")
        for s, sid in zip(sents, sent_ids, strict=True):
            if not s.strip():
                raise EvalError(f"{name}: ref_id {ref_id} sent_id {sid} (image {image_id}) "
                                f"has an empty sentence {s!r}")
        if cur is None or image_id != cur["image_id"]:
            close()
            if image_id in seen:
                raise EvalError(f"{name}: the refs of image {image_id} are not consecutive "
                                "(the data source must be ordered by image)")
            seen.add(image_id)
            cur = {"image_id": image_id, "hw": _image_hw(ex["image"]), "refs": [],
                   "n": 0 if task else int(np.asarray(ex["proposal_ann_ids"]).size)}
        ref = RefMeta(index=i, ref_id=ref_id, ann_id=-1 if task else int(ex["ann_id"]),
                      sent_ids=sent_ids, sentences=sents,
                      extra=phrasecut.task_fields(ex, cur["hw"]) if task else ())
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


def prepare_split(config: EvalConfig) -> None:
    """Build the TFDS split if needed (and, for a dataset with a ``prepare`` hook, its raw
    sources if missing: `datasets.DatasetHooks`)."""
    from tfds_refcoco import canonical_config_name, make_builder
    from tfds_refcoco.refer import LAYOUTS, ReferFormatError

    config = config.with_defaults()
    name = canonical_config_name(config.dataset)
    built = make_builder(name, config.data_dir).is_prepared()
    if config.manual_dir is None:
        if not built:
            raise EvalError(f"dataset {config.dataset} is not built in {config.data_dir}: give "
                            "--manual-dir (its raw files, see tfds_refcoco/README.md)")
        return
    hooks = dataset_hooks(config.dataset)
    if hooks is not None and hooks.prepare is not None and config.prepare_sources:
        hooks.prepare(config.manual_dir)  # also read by its `annotate` hook
    if name == PHRASECUT and not built:
        phrasecut.check_files(config.manual_dir)
    elif name != PHRASECUT and not built:
        layout = LAYOUTS[name]  # fail with the file's name before TFDS's manual-dir check
        for path, what in ((layout.refs_path(config.manual_dir), "refs pickle"),
                           (layout.instances_path(config.manual_dir), "instances file")):
            if not Path(path).expanduser().is_file():
                raise ReferFormatError(f"{what} not found: {path} (dataset {config.dataset} "
                                       f"is not built in {config.data_dir} either)")
    _load_split(name, config, built)


def _load_split(name: str, config: EvalConfig, built: bool) -> None:
    """`tfds_refcoco.load_split` (which builds the dataset if it is not built) with TFDS's
    stdout banners ("Downloading and preparing dataset Unknown size ...": nothing is
    downloaded) replaced by one log line with the build time."""
    from tfds_refcoco import load_split

    if built:
        load_split(name, config.split, config.manual_dir, config.data_dir)
        return
    log.info("building TFDS %s from %s into %s (once)", name, config.manual_dir,
             config.data_dir)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        load_split(name, config.split, config.manual_dir, config.data_dir)
    log.info("built TFDS %s in %.1fs", name, time.perf_counter() - t0)


def open_split(config: EvalConfig) -> SplitSources:
    """Open the (prepared) split as random-access data sources."""
    import tensorflow_datasets as tfds

    from tfds_refcoco import canonical_config_name, make_builder

    config = config.with_defaults()
    name = canonical_config_name(config.dataset)
    builder = make_builder(name, config.data_dir)
    if config.split not in builder.info.splits:
        raise EvalError(f"dataset {config.dataset} has no split {config.split!r}; available: "
                        f"{list(builder.info.splits)}")
    features = set(builder.info.features.keys())

    def skip(*keys: str) -> dict[str, Any]:
        return {k: tfds.decode.SkipDecoding() for k in keys if k in features}

    return SplitSources(
        full=builder.as_data_source(config.split),
        mask_only=builder.as_data_source(config.split, decoders=skip("image", "proposals")),
        light=builder.as_data_source(config.split,
                                     decoders=skip("image", "mask", "proposals")),
        name=f"{config.dataset}/{config.split}")
