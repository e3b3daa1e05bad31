"""Checks of a run's settings and paths made before anything is loaded or written: numbers
that must be >= 1 and the folders / files the run reads or writes (``--out``, ``--data-dir``,
``--save-proposals``, ``--proposals FILE``, ``$ITERPRIME_CACHE``; the CLI adds ``--record``).
Each failure is an `EvalError` whose message names the flag. The probes leave nothing behind:
a folder that does not exist yet is tested by creating (and removing) a temporary folder in
its nearest existing parent. Also here: the checks made once the split is indexed, still
before run_config.json is written (dataset options, a proposals file against the split, the
parser, a smaller ``--limit`` on a fuller run)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..config import IteRPrimEConfig
from ..models.loading import CACHE_ENV
from .config import PHRASECUT, EvalConfig, EvalError
from .index import ImageMeta
from .proposals import ProposalSource

FIXED_PROPOSALS = ("gt", "heatmap", "mask2former")

log = logging.getLogger(__name__)


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _file_above(path: Path) -> Path | None:
    """`path` or the first folder above it that exists but is not a folder (a file)."""
    for q in (path, *path.parents):
        if q.exists() or q.is_symlink():
            return None if q.is_dir() else q
    return None


def _existing_parent(path: Path) -> Path:
    for q in (path, *path.parents):
        if q.is_dir():
            return q
    return Path(".")


def _named(flag: str, path: str | Path) -> str:
    """``--out PATH`` for a flag, ``ITERPRIME_CACHE=PATH`` for an environment variable."""
    return f"{flag} {path}" if flag.startswith("-") else f"{flag}={path}"


def _probe(folder: Path) -> None:
    """OSError unless a folder can be created (and is removed again) in `folder`."""
    os.rmdir(tempfile.mkdtemp(prefix=".iterprime-probe-", dir=folder))


def check_dir(path: str | Path, flag: str, *, writable: bool) -> None:
    """`path` is a folder or can be created (and, with `writable`, written to): else an
    EvalError naming `flag`."""
    p = Path(path).expanduser()
    q = _file_above(p)
    if q is not None:
        where = "is a file" if q == p else f"is under {q}, a file"
        raise EvalError(f"{_named(flag, path)} {where}; {flag} names a folder")
    if p.is_dir() and not writable:
        return
    try:
        _probe(_existing_parent(p))
    except OSError as e:
        verb = "write to" if p.is_dir() else "create"
        raise EvalError(f"{_named(flag, path)}: cannot {verb} it ({_reason(e)})") from None


def check_file(path: str | Path, flag: str) -> None:
    """`path` can be written as a file: not a folder, its folder creatable and writable, an
    existing file writable; else an EvalError naming `flag`."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise EvalError(f"{flag} {path} is a folder; {flag} names a file")
    q = _file_above(p.parent)
    if q is not None:
        raise EvalError(f"{flag} {path}: {q} is a file, not a folder")
    try:
        _probe(_existing_parent(p.parent))
        if p.exists():
            with p.open("ab"):  # appends nothing: only asks whether it could
                pass
    except OSError as e:
        raise EvalError(f"{flag} {path}: cannot write it ({_reason(e)})") from None


def check_values(config: EvalConfig) -> None:
    """limit, batch_size and canvas, when given, must be >= 1."""
    for name, value in (("limit", config.limit), ("batch-size", config.batch_size),
                        ("canvas", config.canvas)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise EvalError(f"--{name} must be an integer >= 1, got {value!r}")


def check_paths(config: EvalConfig) -> None:
    """The run's folders and files (see the module docstring); `config` with defaults."""
    cache = os.environ.get(CACHE_ENV)
    if cache:
        check_dir(cache, CACHE_ENV, writable=False)
    if config.out is not None:
        check_dir(config.out, "--out", writable=True)
    if config.data_dir is not None:
        check_dir(config.data_dir, "--data-dir", writable=False)
    if config.save_proposals is not None:
        check_file(config.save_proposals, "--save-proposals")
    if config.proposals not in FIXED_PROPOSALS:
        p = Path(config.proposals).expanduser()
        if p.is_dir():
            raise EvalError(f"--proposals {config.proposals} is a folder; --proposals takes "
                            f"{', '.join(FIXED_PROPOSALS)} or a results JSON FILE")


def check_settings(config: EvalConfig) -> None:
    """`check_values` and `check_paths`: everything about a run that can be checked before
    loading anything."""
    check_values(config)
    check_paths(config.with_defaults())


def check_dataset_options(config: EvalConfig, proposals: ProposalSource) -> None:
    """Options the dataset cannot serve: ``unseen`` off PhraseCut, ``gt`` proposals on it."""
    if config.unseen and config.dataset != PHRASECUT:
        raise EvalError(f"unseen applies to PhraseCut only, not to {config.dataset}")
    if config.dataset == PHRASECUT and proposals.kind == "gt":
        raise EvalError("PhraseCut has no per-image instance masks, so there are no oracle "
                        "('gt') proposals: use --proposals mask2former, a proposals FILE or "
                        "heatmap")


def check_proposals_match(proposals: ProposalSource, split_ids: set[int],
                          images: list[ImageMeta], name: str) -> None:
    """A proposals file must be of this split: an EvalError for an entry whose image_id is no
    image of the split, or a file with no entry for any evaluated image; a WARNING counts the
    evaluated images without an entry (their sentences are misses)."""
    assert proposals.by_image is not None
    foreign = sorted(i for i in proposals.by_image if i not in split_ids)
    if foreign:
        raise EvalError(f"--proposals {proposals.path}: {len(foreign)} of its "
                        f"{len(proposals.by_image)} image_ids are no image of {name} (e.g. "
                        f"image_id {foreign[0]}); is it the proposals file of another split?")
    missing = [m for m in images if m.image_id not in proposals.by_image]
    if len(missing) == len(images):
        raise EvalError(f"--proposals {proposals.path} has no entry for any of the "
                        f"{len(images)} evaluated images of {name}")
    if missing:
        log.warning("%d of %d images have no entry in %s: their %d sentences get no "
                    "proposal (counted as misses, no candidate)", len(missing), len(images),
                    proposals.path, sum(m.num_sentences for m in missing))


def check_parser(method: IteRPrimEConfig) -> None:
    """The method's parser loads (cached for the run: spaCy's `spacy_model`, or Stanza's
    English models): else an EvalError naming the setting and how to fix it."""
    from ..method.language import ParserUnavailableError, load_parser

    try:
        load_parser(method)
    except ParserUnavailableError as e:
        raise EvalError(f"--parser {method.parser}: {e}".replace("\n", " ")) from None
    except (OSError, ImportError) as e:
        raise EvalError(f"--spacy-model: {e}".replace("\n", " ")) from None


def check_no_other_samples(out: Path, done: set[tuple[int, int]], images: list[ImageMeta]
                           ) -> None:
    """metrics.json describes all of samples.jsonl: a run over fewer images than `out`
    already holds samples of (a smaller --limit) is refused."""
    wanted = {k for m in images for k in m.keys()}
    extra = len(done - wanted)
    if extra:
        raise EvalError(f"{out} already holds {len(done)} samples, {extra} of them of images "
                        f"this run does not evaluate (a smaller --limit than before?); its "
                        "metrics.json describes all of samples.jsonl: rerun without --limit or "
                        "with one covering them, or use another --out")
