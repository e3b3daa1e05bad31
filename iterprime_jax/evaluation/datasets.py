"""Datasets the evaluator knows beyond its own: a small interface (`DatasetHooks`) that a
project registers under a dataset name, so that the library never imports it.

The library evaluates the `tfds_refcoco` configs RefCOCO/+/g and PhraseCut (`LIBRARY_DATASETS`)
with nothing more than their raw files. A dataset that brings more (raw sources it can
generate, a default model, a report of its own beside the metrics) registers its hooks:

* installed: an entry point in the group ``iterprime_jax.datasets`` naming a `DatasetHooks`
  object, e.g. in pyproject.toml::

      [project.entry-points."iterprime_jax.datasets"]
      shapesref = "shapesref.evaluation:DATASET"

* in a program: `register_dataset(DatasetHooks(name=...))`.

`dataset_hooks(name)` loads only the entry point of that name (evaluating RefCOCO imports no
project); `dataset_names()` lists the known names (entry points by name, none loaded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "iterprime_jax.datasets"
#: The datasets of the library (`tfds_refcoco` configs; ``refcoco+_unc`` is an alias of
#: ``refcoco_plus_unc``).
LIBRARY_DATASETS: tuple[str, ...] = ("refcoco_unc", "refcoco+_unc", "refcocog_umd",
                                     "refcocog_google", "phrasecut")
ALIASES = {"refcoco_plus_unc": "refcoco+_unc"}

#: ``annotate(records, manual_dir, convention) -> (records, report)``: the sample records (the
#: lines of samples.jsonl, sorted) with fields of the dataset added, and a JSON-able report on
#: them under the metric convention (``metrics.json["by_kind"]``), or `records` unchanged and
#: None when there is nothing to add.
Annotate = Callable[[list[dict[str, Any]], "str | Path | None", str],
                    tuple[list[dict[str, Any]], Any]]


@dataclasses.dataclass(frozen=True)
class DatasetHooks:
    """What a registered dataset adds to an evaluation; every hook is optional.

    Attributes:
      name: the dataset name (`EvalConfig.dataset`, ``--dataset``; a `tfds_refcoco` config).
      prepare: ``prepare(manual_dir)`` writes the raw sources into `manual_dir` if they are
        missing (run before the TFDS split is built; `EvalConfig.prepare_sources`).
      default_manual_dir: ``() -> Path``: where the raw sources are when no ``manual_dir``
        is given.
      default_weights: ``() -> str``: the model evaluated when no ``weights`` are given (a
        converted directory or a hub id).
      annotate: see `Annotate`; its records are rewritten into samples.jsonl.
      format_report: ``format_report(report) -> str``: the report as printed by the CLI.
      description: one line for ``--help``.
    """

    name: str
    prepare: Callable[[str | Path], None] | None = None
    default_manual_dir: Callable[[], Path] | None = None
    default_weights: Callable[[], str] | None = None
    annotate: Annotate | None = None
    format_report: Callable[[Any], str] | None = None
    description: str = ""


_REGISTERED: dict[str, DatasetHooks] = {}


def register_dataset(hooks: DatasetHooks) -> None:
    """Make `hooks` known under ``hooks.name`` in this process (over an entry point of the same
    name); a library dataset name gets its hooks too."""
    _REGISTERED[hooks.name] = hooks


def unregister_dataset(name: str) -> None:
    """Forget what `register_dataset` registered under `name` (entry points stay)."""
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed entry points of `ENTRY_POINT_GROUP` by name (none loaded)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def dataset_names() -> tuple[str, ...]:
    """Every dataset name the evaluator accepts: the library's, then the registered and
    installed ones (sorted)."""
    extra = (set(_REGISTERED) | set(_entry_points())) - set(LIBRARY_DATASETS)
    return LIBRARY_DATASETS + tuple(sorted(extra))


def is_known(name: str) -> bool:
    """Whether `name` (or its alias) is in `dataset_names`."""
    return ALIASES.get(name, name) in dataset_names()


def dataset_hooks(name: str) -> DatasetHooks | None:
    """The hooks of dataset `name`: registered in this process, else its installed entry point
    (only that one is imported), else None (a library dataset without hooks). ValueError,
    listing the known names, for a name that is none of these."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    ep = _entry_points().get(name)
    if ep is not None:
        hooks = ep.load()
        if not isinstance(hooks, DatasetHooks) or hooks.name != name:
            raise ValueError(f"entry point {ep.value!r} ({ENTRY_POINT_GROUP}: {name}) must name "
                             f"a DatasetHooks with name {name!r}, got {hooks!r}")
        return hooks
    if ALIASES.get(name, name) in LIBRARY_DATASETS:
        return None
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
