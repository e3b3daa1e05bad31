"""Command-line flags of the method, derived from `IteRPrimEConfig`'s fields (shared by the CLIs).

Every field gets a flag ``--field-name`` (``layer`` -> ``--layer``, ``stretch_center`` ->
``--stretch-center``) typed like its default, with the help text of the field's metadata;
booleans get ``--name`` / ``--no-name`` (plus the aliases in the metadata, e.g. ``--pwe`` /
``--no-pwe``). Flags have no argparse default: only the flags actually given reach
`method_overrides`, which the one resolver `iterprime_jax.models.loading.resolve_method` lays
over the weights' ``method.json`` and the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .config import IteRPrimEConfig

GROUP_TITLE = "method (IteRPrimE) switches"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_method_args(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per `IteRPrimEConfig` field (in a group; defaults shown in the help)."""
    g = parser.add_argument_group(GROUP_TITLE)
    default = IteRPrimEConfig()
    for f in dataclasses.fields(IteRPrimEConfig):
        value = getattr(default, f.name)
        flags = [_flag(f.name), *f.metadata.get("aliases", ())]
        help_text = f"{f.metadata.get('help', '')} (default: {value})"
        if isinstance(value, bool):
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(*flags, dest=f.name, type=type(value), default=argparse.SUPPRESS,
                           metavar=f.name.upper(), choices=f.metadata.get("choices"),
                           help=help_text)


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `IteRPrimEConfig` fields set on the command line (flags not given are absent)."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(IteRPrimEConfig)
            if f.name in given}
