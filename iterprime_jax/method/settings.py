"""The method settings a checkpoint recommends (`method.json`, `METHOD_JSON`), in one place:
reading and checking the file (`read_method_json`), writing it (`write_method_json`, what the
converters and the training CLI call), `method_config` for the library and `resolve_method`,
the one resolver of every CLI (flags > method.json > defaults), and `validate_method` (a
setting the model cannot serve, with where its value came from).

Depends on the config layer (`iterprime_jax.config`) and `models.checkpoint.CheckpointError`
only: the models' converters import it, and nothing of the method's computation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import IteRPrimEConfig, field_problem
from ..models.checkpoint import CheckpointError, read_json_object

#: Per-checkpoint recommended `IteRPrimEConfig` fields (written by the converters and the
#: training CLI).
METHOD_JSON = "method.json"

__all__ = ["METHOD_JSON", "method_config", "read_method_json", "resolve_method",
           "validate_method", "write_method_json"]


def _check_fields(fields: Mapping[str, Any], f: Path | str) -> None:
    """CheckpointError naming `f` for an unknown IteRPrimEConfig field or a wrong type."""
    known = {x.name for x in dataclasses.fields(IteRPrimEConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{f}: unknown IteRPrimEConfig fields {unknown}; known: "
                              f"{sorted(known)}")
    default = IteRPrimEConfig()
    for k, v in fields.items():
        want = type(getattr(default, k))
        ok = isinstance(v, want) or (want is float and isinstance(v, int))
        if not ok or (want is int and isinstance(v, bool)):
            raise CheckpointError(f"{f}: field {k!r} must be {want.__name__}, got {v!r}")


def read_method_json(path: str | Path) -> dict[str, Any]:
    """The `method.json` of a checkpoint directory (empty dict if absent): recommended
    `IteRPrimEConfig` fields, checked for unknown names and wrong types (CheckpointError)."""
    f = Path(path) / METHOD_JSON
    if not f.exists():
        return {}
    fields = read_json_object(f, holds="a JSON object of IteRPrimEConfig fields")
    _check_fields(fields, f)
    return fields


def write_method_json(directory: str | Path, fields: Mapping[str, Any]) -> Path:
    """Write `fields` (IteRPrimEConfig field names -> values, checked as `read_method_json`
    checks them) as `directory/method.json`; returns its path."""
    f = Path(directory) / METHOD_JSON
    _check_fields(fields, f)
    f.write_text(json.dumps(dict(fields), indent=2) + "\n")
    return f


def method_config(model: Any, **overrides: Any) -> IteRPrimEConfig:
    """The method config recommended for a checkpoint (a loaded `Model`, or its directory):
    `IteRPrimEConfig()` updated with the fields of `method.json` in its directory (if
    present), then with `overrides`.

    Small models ship a `method.json` (e.g. the Grad-CAM layer of a 3-layer text encoder);
    the paper's defaults apply to the public BLIP checkpoints.
    """
    path = Path(model) if isinstance(model, str | os.PathLike) else Path(model.path)
    return IteRPrimEConfig(**{**read_method_json(path), **overrides})


def validate_method(method: IteRPrimEConfig, num_text_layers: int,
                    max_positions: int | None = None, source: str = "",
                    sources: Mapping[str, str] | None = None) -> None:
    """Clear errors (ValueError) for a setting out of its range or one the model cannot serve
    (Grad-CAM layer, text length); `sources` names where each field's value came from (else
    `source` for all of them)."""
    def where(name: str) -> str:
        s = (sources or {}).get(name, source)
        return f" (from {s})" if s else ""

    for f in dataclasses.fields(IteRPrimEConfig):
        problem = field_problem(f.name, getattr(method, f.name))
        if problem:
            raise ValueError(problem + where(f.name))
    if not 0 <= method.layer < num_text_layers:
        raise ValueError(f"Grad-CAM layer {method.layer} is out of range for a model with "
                         f"{num_text_layers} text layers{where('layer')}")
    if max_positions is not None and method.max_text_length > max_positions:
        raise ValueError(f"max_text_length {method.max_text_length} exceeds the model's "
                         f"{max_positions} text positions{where('max_text_length')}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_method(weights_dir: str | Path, num_text_layers: int,
                   overrides: Mapping[str, Any] | None = None,
                   max_positions: int | None = None) -> IteRPrimEConfig:
    """The method settings of a run, validated: `IteRPrimEConfig()` defaults (the Grad-CAM
    layer clipped to the model's last layer), then the weights' `method.json`, then
    `overrides` (the flags given on a command line, `cli_args.method_overrides`). An invalid
    value is reported with its source: the flag, the method.json file, or the default."""
    d = IteRPrimEConfig()
    rec = read_method_json(weights_dir)
    overrides = dict(overrides or {})
    fields = {"layer": min(d.layer, num_text_layers - 1), **rec, **overrides}
    sources = {f.name: (f"the flag {_flag(f.name)}" if f.name in overrides else
                        str(Path(weights_dir) / METHOD_JSON) if f.name in rec else "the default")
               for f in dataclasses.fields(IteRPrimEConfig)}
    for name, value in fields.items():  # before the config's own check, to name the source
        problem = field_problem(name, value)
        if problem:
            raise ValueError(f"{problem} (from {sources[name]})")
    method = d.replace(**fields)
    validate_method(method, num_text_layers, max_positions, sources=sources)
    return method
