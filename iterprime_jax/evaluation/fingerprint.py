"""Content hashes that identify a run's inputs: `file_sha256` (one file's bytes) and
`weights_fingerprint` (a checkpoint directory's bytes), used by the resume check
(``run_config.json``) and by the proposal sources.

A checkpoint's fingerprint is the SHA-256 over the sorted relative names and the SHA-256 of
the bytes of every file of the directory, except the files that do not change what the model
computes: ``method.json`` (recommended method settings; the method itself is a separate field
of the run config) and ``training_log*``. Hashing the bytes of a large checkpoint takes a few
seconds, so the digest of each file is cached in ``$ITERPRIME_CACHE/fingerprints.json``, keyed
by the file's absolute path, size and modification time (ns): a file rewritten in place gets a
new mtime and is hashed again; entries of deleted files are dropped when the cache is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..method.settings import METHOD_JSON
from ..models.loading import cache_dir

CACHE_NAME = "fingerprints.json"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of the bytes of the file at `path`."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _counted(rel: str) -> bool:
    return rel != METHOD_JSON and not rel.startswith("training_log")


def _read_cache(path: Path) -> dict[str, list[object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, list[object]]) -> None:
    """Best effort: an unwritable cache only costs the hashing next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def weights_fingerprint(path: str | Path, cache: Path | None = None) -> str:
    """SHA-256 (hex) over the contents of the checkpoint directory `path` (see the module
    docstring). `cache`: the digest cache file (default ``cache_dir() / "fingerprints.json"``).
    """
    root = Path(path).resolve()
    cache = cache_dir() / CACHE_NAME if cache is None else cache
    known = _read_cache(cache)
    changed = False
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if not _counted(rel):
            continue
        st = f.stat()
        key, stamp = str(f), [st.st_size, st.st_mtime_ns]
        entry = known.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp:
            digest = str(entry[2])
        else:
            digest = file_sha256(f)
            known[key] = [*stamp, digest]
            changed = True
        h.update(f"{rel}:{digest}\n".encode())
    if changed:  # entries of files that are gone are dropped, so the cache stays small
        _write_cache(cache, {k: v for k, v in known.items() if Path(k).is_file()})
    return h.hexdigest()
