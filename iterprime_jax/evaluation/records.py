"""The files of a run directory: per-sentence records (``samples.jsonl``; reading, repairing a
half-written last line after a kill, merging the per-process files), the run identity
(``run_config.json``, checked on resume) and split metrics from the records."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IteRPrimEConfig
from ..metrics import summarize
from .config import PHRASECUT, RUN_CONFIG, RUN_CONFIG_VERSION, SAMPLES, EvalConfig, EvalError
from .fingerprint import weights_fingerprint
from .proposals import ProposalSource


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


def sample_files(out: Path) -> list[Path]:
    return [out / SAMPLES, *sorted(out.glob("samples.p*.jsonl"))]


def atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def dumps_sample(rec: Mapping[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False)


def merge_samples(out: Path) -> list[dict[str, Any]]:
    """Union of samples.jsonl and samples.p*.jsonl (later files win on duplicate keys),
    rewritten sorted to samples.jsonl; the per-process files are removed."""
    files = sample_files(out)
    merged: dict[tuple[int, int], dict[str, Any]] = {}
    for f in files:
        for rec in read_samples(f):
            merged[sample_key(rec)] = rec
    recs = sorted(merged.values(), key=sort_key)
    atomic_write(out / SAMPLES, "".join(dumps_sample(r) + "\n" for r in recs))
    for f in files[1:]:
        f.unlink(missing_ok=True)
    return recs


# --------------------------------------------------------------------------- run config
def run_identity(config: EvalConfig, method: IteRPrimEConfig, proposals: ProposalSource,
                 weights: Path) -> dict[str, Any]:
    from tfds_refcoco import canonical_config_name

    identity = {
        "version": RUN_CONFIG_VERSION,
        "dataset": canonical_config_name(config.dataset),
        "split": config.split,
        "weights": str(weights),
        "weights_fingerprint": weights_fingerprint(weights),
        "proposals": proposals.describe(),
        "method": dataclasses.asdict(method),
        "precision": config.precision or "highest",
    }
    if config.dataset == PHRASECUT:
        identity["unseen"] = config.unseen
    return identity


#: Fields added to the run identity after version 2, with the value every earlier run had
#: (a run_config.json without them resumes as that value, not as a different run).
ADDED_FIELDS: dict[str, Any] = {"precision": "highest"}
#: `IteRPrimEConfig` fields added to the identity's "method" later, with the value every
#: earlier run had.
ADDED_METHOD_FIELDS: dict[str, Any] = {"parser": "spacy"}

#: Where a checkpoint or a proposals file is: recorded in run_config.json, not compared (the
#: run is identified by their contents: ``weights_fingerprint``, the proposals' ``sha256``).
_LOCATIONS = ("weights", "file", "mask2former")


def _compared(value: Any) -> Any:
    """`value` without its `_LOCATIONS` keys (the identity, or its ``proposals`` dict)."""
    if isinstance(value, Mapping):
        return {k: _compared(v) for k, v in value.items() if k not in _LOCATIONS}
    return value


def has_samples(out: Path) -> bool:
    """Whether a samples file of `out` holds at least one finished line."""
    for f in sample_files(out):
        try:
            with f.open("rb") as fh:
                if b"\n" in fh.read(1 << 16):
                    return True
        except FileNotFoundError:
            continue
    return False


def config_differences(old: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """One line per field of `identity` whose content differs in `old` ("field: old -> new";
    method fields one by one)."""
    old = {**ADDED_FIELDS, **old}
    if isinstance(old.get("method"), Mapping):
        old["method"] = {**ADDED_METHOD_FIELDS, **old["method"]}
    lines = []
    for k in identity:
        a, b = _compared(old.get(k)), _compared(identity[k])
        if a == b or k in _LOCATIONS:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping) and k == "method":
            lines += [f"{k}.{f}: {a.get(f)!r} -> {b.get(f)!r}"
                      for f in dict.fromkeys([*a, *b]) if a.get(f) != b.get(f)]
        else:
            lines.append(f"{k}: {a!r} -> {b!r}")
    return lines


def check_run_config(out: Path, identity: Mapping[str, Any], write: bool) -> bool:
    """Compare with ``out/run_config.json`` by content (a checkpoint or proposals file at
    another path with the same bytes is the same run; a field it lacks counts as its
    `ADDED_FIELDS` / `ADDED_METHOD_FIELDS` value): an EvalError listing the differing fields,
    one per line, unless `out` holds no finished sample (a run that failed before its first
    sample), whose run_config.json is replaced when `write`. Writes it if missing and `write`.
    Returns whether the run config found there is this run's (a resume)."""
    path = out / RUN_CONFIG
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            old = None
            error = f"{path} is not valid JSON ({e}); remove it or use another --out"
        else:
            diff = config_differences(old, identity) if isinstance(old, dict) \
                else [f"{RUN_CONFIG} holds {type(old).__name__}, not a JSON object"]
            if not diff:
                return True
            error = (f"{out} holds a run with a different configuration; use another --out "
                     "or remove it to start over. Differences (run_config.json -> this run):"
                     + "".join(f"\n  {d}" for d in diff))
        if has_samples(out):
            raise EvalError(error)
        if not write:
            return False
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(dict(identity), indent=2) + "\n")
    return False


def metrics_from_samples(recs: Iterable[Mapping[str, Any]], convention: str = "standard"
                         ) -> dict[str, float | int]:
    """`summarize` over the I and U of sample records (int64)."""
    recs = list(recs)
    i = np.asarray([int(r["I"]) for r in recs], np.int64)
    u = np.asarray([int(r["U"]) for r in recs], np.int64)
    return summarize(i, u, convention=convention)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- per-process parts
def part_file(out: Path, name: str, process: int) -> Path:
    """The part file of `process` for the result file `name` (``ablation.json`` ->
    ``ablation.p{process}.json``), as `merge_samples` names the samples' parts."""
    stem, dot, suffix = name.partition(".")
    return Path(out) / f"{stem}.p{process}{dot}{suffix}"


def write_part(out: Path, name: str, process: int, value: Any) -> None:
    """Write this process's share of the result file `name` as JSON (`part_file`)."""
    atomic_write(part_file(out, name, process), json.dumps(value))


def merge_parts(out: Path, name: str, processes: int) -> list[Any]:
    """The JSON values of the part files of `name` of processes 0 .. processes - 1, in
    process order; the part files are removed."""
    values = []
    for p in range(processes):
        f = part_file(out, name, p)
        values.append(json.loads(f.read_text(encoding="utf-8")))
        f.unlink()
    return values
