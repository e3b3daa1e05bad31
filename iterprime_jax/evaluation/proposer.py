"""Evaluation with proposals computed on the fly by a Mask2Former checkpoint, and saving them.

`open_proposer` loads and checks the proposer; `ProposalSaver` appends every image's proposals
(COCO RLE, one JSON line per image) to ``OUT/proposals.p{process}.jsonl`` as the run goes, so a
resumed run keeps them, and `ProposalSaver.merge` writes the COCO-style results JSON that
``--proposals FILE`` reads (`evaluation.proposals.load_proposals_file`): a list of
``{"image_id", "segmentation": {"size": [H, W], "counts": str}}``, the image's queries in order.
RLEs are written with the one encoder of the project (`proposals.encode_rle`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..models.mask2former.preprocess import ProposeConfig
from ..models.mask2former.propose import Proposer, check_proposer

PARTS_GLOB = "proposals.p*.jsonl"


def open_proposer(weights: str | Path | None, config: ProposeConfig, max_batch: int,
                  error: type[Exception] = ValueError, precision: str = "highest"
                  ) -> tuple[Proposer, Path]:
    """`Proposer` over the Mask2Former checkpoint `weights` (a converted directory or a Hugging
    Face hub id, fetched and converted once) at the matmul `precision`, and its directory;
    errors name `weights`."""
    from ..models.checkpoint import CheckpointError
    from ..models.loading import is_hub_id, load, resolve_hub_id

    if weights is None:
        raise error("proposals 'mask2former' need the proposer's weights "
                    "(--proposer-weights DIR: a converted Mask2Former checkpoint)")
    path = Path(weights).expanduser()
    try:
        if not path.is_dir() and is_hub_id(str(weights)):
            path = resolve_hub_id(str(weights))
        if not path.is_dir():
            raise error(f"proposer weights directory {weights} does not exist")
        model = load(path, precision=precision)
        check_proposer(model, f"proposer weights {weights}")
    except (CheckpointError, ValueError) as e:
        raise error(str(e)) from None
    return Proposer(model, config, max_batch=max_batch), path.resolve()


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(Q, H, W) bool -> Q COCO RLE dicts (``counts`` as str)."""
    from .proposals import encode_rle

    return [encode_rle(m) for m in masks]


class ProposalSaver:
    """Per-process JSONL of per-image RLE proposals under the run's output dir."""

    def __init__(self, out: Path, process_index: int):
        self.path = Path(out) / f"proposals.p{process_index}.jsonl"

    def write(self, image_ids: Sequence[int], rles: Sequence[list[dict[str, Any]]]) -> None:
        """Append one line per image and flush (called before its samples are written)."""
        with self.path.open("a", encoding="utf-8") as f:
            for image_id, r in zip(image_ids, rles, strict=True):
                f.write(json.dumps({"image_id": int(image_id), "segmentations": r}) + "\n")
            f.flush()

    @staticmethod
    def read_parts(out: Path) -> dict[int, list[dict[str, Any]]]:
        """{image_id: RLEs} from every part file (a half-written last line is skipped)."""
        found: dict[int, list[dict[str, Any]]] = {}
        for part in sorted(Path(out).glob(PARTS_GLOB)):
            lines = part.read_text(encoding="utf-8").split("\n")
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    if n == len(lines) - 1:
                        continue
                    raise ValueError(f"{part}: line {n + 1} is not valid JSON") from None
                found[int(rec["image_id"])] = rec["segmentations"]
        return found

    @classmethod
    def merge(cls, out: Path, image_ids: Iterable[int], dst: str | Path) -> int:
        """Write the results JSON `dst` for `image_ids` (in that order); returns the number of
        entries. ValueError naming the images whose proposals were never saved."""
        found = cls.read_parts(out)
        ids = list(image_ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(
                f"cannot write {dst}: the proposals of {len(missing)} images (e.g. image "
                f"{missing[0]}) were not saved in {out} (they were computed by a run without "
                "--save-proposals); use a fresh --out to save them all")
        items = [{"image_id": i, "segmentation": r} for i in ids for r in found[i]]
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(items), encoding="utf-8")
        os.replace(tmp, dst)
        return len(items)
