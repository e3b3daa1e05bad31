"""Command-line switches for every method option (shared by the CLIs)."""

from __future__ import annotations

import argparse

from .config import IteRPrimEConfig

# CLI dest -> IteRPrimEConfig field it sets.
METHOD_FLAG_FIELDS: dict[str, str] = {
    "layer": "layer", "iterations": "iterations", "alpha": "alpha", "no_pwe": "use_pwe",
    "no_template": "use_template", "template": "template", "keep_rejected": "keep_rejected",
    "max_components": "max_components", "heat_threshold": "heat_threshold",
    "max_text_length": "max_text_length", "spacy_model": "spacy_model",
    "fallback_threshold": "empty_if_no_candidate",
}


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options actually given in `argv` (defaults suppressed).

    The defaults are suppressed for the probe parse and restored afterwards.
    """
    saved = [(a, a.default) for a in parser._actions]  # noqa: SLF001 - no public API
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))


def explicit_method_fields(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """`IteRPrimEConfig` fields set explicitly on the command line (they beat method.json)."""
    return {METHOD_FLAG_FIELDS[d] for d in explicit_dests(parser, argv)
            if d in METHOD_FLAG_FIELDS}


def add_method_args(ap: argparse.ArgumentParser) -> None:
    d = IteRPrimEConfig()
    g = ap.add_argument_group("method (IteRPrimE) switches")
    g.add_argument("--layer", type=int, default=None,
                   help=f"text layer for Grad-CAM (default {d.layer}; clipped to the model's "
                        "last layer for shallower models)")
    g.add_argument("--iterations", type=int, default=d.iterations,
                   help="IGRS passes in all (1 = plain Grad-CAM)")
    g.add_argument("--alpha", type=float, default=d.alpha, help="IGRS blend weight")
    g.add_argument("--no-pwe", action="store_true", help="disable Primary Word Emphasis")
    g.add_argument("--no-template", action="store_true", help="no prompt template")
    g.add_argument("--template", default=d.template, help="prompt template")
    g.add_argument("--keep-rejected", action="store_true",
                   help="authors' behaviour: blend the rejected IGRS pass into the map")
    g.add_argument("--max-components", type=int, default=d.max_components)
    g.add_argument("--heat-threshold", type=float, default=d.heat_threshold)
    g.add_argument("--max-text-length", type=int, default=d.max_text_length)
    g.add_argument("--spacy-model", default=d.spacy_model)
    g.add_argument("--fallback-threshold", action="store_true",
                   help="when no proposal covers a seed, use the thresholded heat map "
                        "instead of an empty mask")


def method_config_from_args(args: argparse.Namespace, num_text_layers: int) -> IteRPrimEConfig:
    layer = IteRPrimEConfig().layer if args.layer is None else args.layer
    if args.layer is None:
        layer = min(layer, num_text_layers - 1)
    return IteRPrimEConfig(
        layer=layer, iterations=args.iterations, alpha=args.alpha, use_pwe=not args.no_pwe,
        use_template=not args.no_template, template=args.template,
        keep_rejected=args.keep_rejected, max_components=args.max_components,
        heat_threshold=args.heat_threshold, max_text_length=args.max_text_length,
        spacy_model=args.spacy_model, empty_if_no_candidate=not args.fallback_threshold)
