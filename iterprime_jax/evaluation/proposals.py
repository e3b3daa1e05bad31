"""Proposal sources of an evaluation: ``gt`` (the image's instance masks), ``heatmap`` (none),
``mask2former`` (computed on the fly by a converted Mask2Former, `evaluation.proposer`) or a
COCO-style results JSON of class-agnostic RLE masks, read and decoded here (the one RLE-JSON
proposals reader, also used by the one-image CLI)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import EvalConfig, EvalError
from .fingerprint import file_sha256, weights_fingerprint
from .index import ImageMeta


@dataclasses.dataclass(frozen=True)
class ProposalSource:
    """``gt`` / ``heatmap`` / ``file`` (RLEs per image id, in file order) / ``mask2former``
    (`proposer`, a `Proposer`, computes them per batch; `path` is its checkpoint dir)."""

    kind: str
    path: Path | None = None
    by_image: Mapping[int, list[dict[str, Any]]] | None = None
    proposer: Any = None

    @property
    def uses_proposals(self) -> bool:
        return self.kind != "heatmap"

    def count(self, image: ImageMeta) -> int:
        if self.kind == "gt":
            return image.num_gt_proposals
        if self.kind == "file":
            assert self.by_image is not None
            return len(self.by_image.get(image.image_id, ()))
        if self.kind == "mask2former":
            return self.proposer.num_queries
        return 0

    def describe(self) -> Any:
        if self.kind == "file":
            assert self.path is not None
            return {"file": str(self.path), "sha256": file_sha256(self.path)}
        if self.kind == "mask2former":
            assert self.path is not None
            rule = json.loads(json.dumps(dataclasses.asdict(self.proposer.config)))
            return {"mask2former": str(self.path),
                    "weights_fingerprint": weights_fingerprint(self.path), "rule": rule}
        return self.kind


def _read_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise EvalError(f"proposals file {path} does not exist")
    try:
        items = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EvalError(f"proposals file {path} is not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise EvalError(f"proposals file {path} must hold a JSON list of results "
                        f"({{'image_id', 'segmentation'}}), got {type(items).__name__}")
    return items


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, in
    Python, so that a malformed string is caught instead of decoded). ValueError on a
    character outside the alphabet, a truncated run or a negative run length."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("the string ends inside a run length")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} is not in the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if x < 0:
            raise ValueError(f"run {len(out)} has a negative length {x}")
        out.append(x)
    return out


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool mask -> its COCO RLE with ``counts`` as str (JSON-ready): the one RLE
    encoder of the project (saved proposals, the ShapesRef generator's occluded objects)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _checked_rle(seg: Any, path: Path, k: int, image_id: Any) -> dict[str, Any]:
    """A ``{"size": [H, W], "counts": str | list}`` RLE, checked (its run lengths must be
    non-negative integers summing to H*W, in the list and in the compressed string form);
    EvalError naming the file and entry k."""
    size = seg.get("size") if isinstance(seg, dict) else None
    counts = seg.get("counts") if isinstance(seg, dict) else None
    where = f"proposals file {path}: entry {k} (image {image_id})"
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            or not isinstance(counts, str | list)):
        raise EvalError(f"{where} needs an RLE segmentation {{'size': [H, W], 'counts': str "
                        "or list}")
    if isinstance(counts, str):
        try:
            runs = rle_string_counts(counts)
        except ValueError as e:
            raise EvalError(f"{where}: malformed compressed RLE counts: {e}") from None
    else:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise EvalError(f"{where}: RLE counts must be non-negative integers")
        runs = counts
    h, w = size
    if sum(runs) != h * w:
        raise EvalError(f"{where}: RLE counts sum to {sum(runs)} pixels, but its size "
                        f"{h}x{w} has {h * w}: the mask is malformed")
    return {"size": [int(v) for v in size], "counts": counts}


def load_proposals_file(path: str | Path) -> dict[int, list[dict[str, Any]]]:
    """A COCO-style results JSON of class-agnostic masks -> {image_id: [RLE, ...]}.

    Entries: ``{"image_id": int, "segmentation": {"size": [H, W], "counts": str | list},
    "score": float (optional)}``; order within an image is kept (the ``proposal`` index of a
    sample refers to it).
    """
    path = Path(path)
    out: dict[int, list[dict[str, Any]]] = {}
    for k, it in enumerate(_read_json_list(path)):
        if not isinstance(it, dict) or "image_id" not in it or "segmentation" not in it:
            raise EvalError(f"proposals file {path}: entry {k} lacks 'image_id' or "
                            "'segmentation'")
        image_id = it["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise EvalError(f"proposals file {path}: entry {k} has a non-integer image_id "
                            f"{image_id!r}")
        rle = _checked_rle(it["segmentation"], path, k, image_id)
        same = out.setdefault(image_id, [])
        if same and same[0]["size"] != rle["size"]:
            raise EvalError(f"proposals file {path}: entry {k} (image {image_id}) has size "
                            f"{tuple(rle['size'])}, an earlier mask of that image "
                            f"{tuple(same[0]['size'])}")
        same.append(rle)
    return out


def read_proposals_json(path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """The proposals of one image from a JSON list of COCO results (``{"segmentation": RLE,
    ...}``; ``image_id`` not needed, but where given it must be the same in every entry: a
    file of several images is refused) or of bare RLEs -> (N, H, W) bool, sizes checked."""
    path = Path(path)
    items = _read_json_list(path)
    ids = sorted({it["image_id"] for it in items if isinstance(it, dict) and "image_id" in it},
                 key=repr)
    if len(ids) > 1:
        shown = ", ".join(repr(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
        raise EvalError(f"proposals file {path} holds the proposals of {len(ids)} images "
                        f"(image_id {shown}); one image's proposals are needed: keep only "
                        "the entries of this image")
    rles = [_checked_rle(it.get("segmentation", it) if isinstance(it, dict) else it, path, k,
                         ids[0] if ids else "of the file")
            for k, it in enumerate(items)]
    return decode_rles(rles, hw, path, ids[0] if ids else None)


def decode_rles(rles: Sequence[dict[str, Any]], hw: tuple[int, int], path: Any = "",
                image_id: Any = None) -> np.ndarray:
    """RLE dicts (checked by the readers above) -> (N, H, W) bool; the size must equal the
    image size `hw` (`image_id`: the image they belong to, named in errors; None: the one
    image of the file)."""
    from tfds_refcoco.refer import decode_segmentation

    which = "the image" if image_id is None else f"image {image_id}"
    masks = np.zeros((len(rles), *hw), bool)
    for k, r in enumerate(rles):
        if tuple(r["size"]) != tuple(hw):
            raise EvalError(f"proposals file {path}: mask {k} of {which} has size "
                            f"{tuple(r['size'])}, the image is {tuple(hw)}")
        try:
            masks[k] = decode_segmentation(r, *hw).astype(bool)
        except Exception as e:  # noqa: BLE001 - pycocotools raises anything on bad counts
            raise EvalError(f"proposals file {path}: cannot decode mask {k} of {which}: {e}"
                            ) from None
    return masks


def proposal_source(spec: str, config: EvalConfig | None = None) -> ProposalSource:
    """``gt`` / ``heatmap`` / ``mask2former`` (needs ``config.proposer_weights``) / the path of
    a proposals file (read here)."""
    if config is not None and config.proposer_weights is not None and spec != "mask2former":
        raise EvalError(f"proposer weights {config.proposer_weights} given, but proposals are "
                        f"{spec!r}: pass proposals 'mask2former' to compute them on the fly")
    if config is not None and config.save_proposals is not None and spec != "mask2former":
        raise EvalError(f"save_proposals {config.save_proposals}: only proposals computed on "
                        f"the fly ('mask2former') can be saved, not {spec!r}")
    if spec == "mask2former":
        from .proposer import open_proposer

        config = config or EvalConfig()
        proposer, path = open_proposer(config.proposer_weights, config.propose,
                                       max(8, config.batch_size or 1), EvalError,
                                       precision=config.precision or "highest")
        return ProposalSource("mask2former", path, proposer=proposer)
    if spec in ("gt", "heatmap"):
        return ProposalSource(spec)
    path = Path(spec).expanduser().resolve()
    return ProposalSource("file", path, load_proposals_file(path))
