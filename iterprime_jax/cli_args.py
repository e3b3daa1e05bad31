"""Command-line flags of the method, derived from `IteRPrimEConfig`'s fields, the proposal
network's flags, and the quiet logging set-up (shared by the CLIs).

Every field gets a flag ``--field-name`` (``layer`` -> ``--layer``, ``stretch_center`` ->
``--stretch-center``) typed like its default, with the help text of the field's metadata;
booleans get ``--name`` / ``--no-name`` (plus the aliases in the metadata, e.g. ``--pwe`` /
``--no-pwe``). Flags have no argparse default: only the flags actually given reach
`method_overrides`, which the one resolver `iterprime_jax.method.settings.resolve_method` lays
over the weights' ``method.json`` and the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

from .config import IteRPrimEConfig

GROUP_TITLE = "method (IteRPrimE) switches"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_method_args(parser: argparse.ArgumentParser,
                    recommended: dict[str, Any] | None = None, source: str = "") -> None:
    """Adds one flag per `IteRPrimEConfig` field (in a group; defaults shown in the help).
    `recommended`: the fields a default checkpoint's ``method.json`` sets (shown as the
    effective default, with `source` naming where they come from)."""
    g = parser.add_argument_group(GROUP_TITLE, description=(
        "Fields the weights' method.json sets (e.g. the Grad-CAM layer of the shipped model) "
        "replace the defaults shown; a flag given replaces both."))
    default = IteRPrimEConfig()
    recommended = recommended or {}
    for f in dataclasses.fields(IteRPrimEConfig):
        value = getattr(default, f.name)
        flags = [_flag(f.name), *f.metadata.get("aliases", ())]
        shown = (f"{recommended[f.name]} from {source}, else {value}"
                 if f.name in recommended else f"{value}")
        help_text = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        if isinstance(value, bool):
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(*flags, dest=f.name, type=type(value), default=argparse.SUPPRESS,
                           metavar=f.name.upper(), choices=f.metadata.get("choices"),
                           help=help_text)
    g.add_argument("--stanza-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="Stanza resources directory holding its English models, for --parser "
                        "stanza (default: $STANZA_RESOURCES_DIR, else Stanza's own default); "
                        "where the models are is not part of a run's identity")


def apply_stanza_dir(args: argparse.Namespace) -> None:
    """``--stanza-dir DIR`` given: the parser loads Stanza's models from DIR (it becomes
    $STANZA_RESOURCES_DIR for this process; `method.language.load_stanza` reads it)."""
    import os

    where = getattr(args, "stanza_dir", None)
    if where is not None:
        os.environ["STANZA_RESOURCES_DIR"] = os.path.expanduser(str(where))


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `IteRPrimEConfig` fields set on the command line (flags not given are absent)."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(IteRPrimEConfig)
            if f.name in given}


def add_proposer_args(parser: argparse.ArgumentParser, save_help: str | None = None) -> None:
    """Flags of the Mask2Former proposal network (docs/method.md section 4; `ProposeConfig`)."""
    from .models.mask2former.preprocess import ProposeConfig

    d = ProposeConfig()
    g = parser.add_argument_group("Mask2Former proposals (computed on the fly)")
    g.add_argument("--proposer-weights", default=None, metavar="DIR",
                   help="converted Mask2Former checkpoint dir or Hugging Face hub id (e.g. "
                        "facebook/mask2former-swin-large-coco-panoptic, converted once)")
    g.add_argument("--proposal-threshold", type=float, default=d.threshold,
                   metavar="T", help="a pixel is in a proposal iff sigmoid(mask logit) > T "
                                       "(default: %(default)s)")
    g.add_argument("--proposal-short-edge", type=int, default=d.short_edge,
                   metavar="PX", help="resize the short side to PX (default: %(default)s, the "
                                        "authors'; smaller is faster and not the method)")
    g.add_argument("--proposal-max-size", type=int, default=d.max_size,
                   metavar="PX", help="cap of the long side after resizing "
                                        "(default: %(default)s, the authors')")
    g.add_argument("--save-proposals", default=None, metavar="FILE",
                   help=save_help or "also write the computed proposals to FILE (COCO-style "
                                     "RLE JSON, usable as --proposals FILE later)")


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    """``--precision``: the matmul precision of the models a CLI loads (the ITM model and the
    Mask2Former proposer; `models.loading.MATMUL_PRECISIONS`, docs/precision.md)."""
    from .models.loading import MATMUL_PRECISIONS

    parser.add_argument(
        "--precision", default=MATMUL_PRECISIONS[0], choices=MATMUL_PRECISIONS,
        help="matmul precision of the models: highest (float32 products; the parity tests'), "
             "high (3 bf16 passes on a TPU, TF32 on a GPU) or default (1 bf16 pass on a TPU, "
             "TF32 on a GPU); no effect on a CPU; see docs/precision.md (default: %(default)s)")


def propose_config_from_args(args: argparse.Namespace) -> Any:
    """`ProposeConfig` from the `add_proposer_args` flags (ValueError naming a bad one)."""
    from .models.mask2former.preprocess import ProposeConfig, check_threshold

    check_threshold(args.proposal_threshold, "--proposal-threshold")
    return ProposeConfig(threshold=args.proposal_threshold,
                         short_edge=args.proposal_short_edge, max_size=args.proposal_max_size)


def quiet_third_party_logs() -> None:
    """No third-party noise at start-up and while loading: JAX's INFO "Unable to initialize
    backend 'tpu'", orbax's INFO lines on every checkpoint read, TFDS's "Downloading and
    preparing dataset" and "Constructing tf.data.Dataset" INFO lines (also when nothing is
    downloaded), transformers' "PyTorch was not found" advice (read when transformers is
    imported, so this runs first), absl and TensorFlow C++ chatter. Warnings and errors
    still show."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("jax._src.xla_bridge", "orbax", "absl", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
