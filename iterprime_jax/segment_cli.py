"""One-image CLI: `python -m iterprime_jax.segment_cli --weights DIR --image PATH --text "..."
[--proposals FILE | --proposer-weights M2F_DIR] --out OUT.png` writes the mask PNG and
`OUT.overlay.png` (heat map and mask outline on the image). With `--proposer-weights` the
proposals are computed from the image by a converted Mask2Former (docs/method.md section 4);
`--save-proposals FILE` also writes them as COCO-style RLE JSON (image_id 0).

(The library function of the same job is `iterprime_jax.segment`, defined in
`iterprime_jax.method.pipeline`; this module is named apart from it so that importing the CLI
never shadows the function.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """Any PIL-readable file -> (H, W, 3) uint8 by the library's image intake
    (`iterprime_jax.image_input.to_rgb_uint8`: grey/RGBA converted, 16-bit rescaled); a clear
    error naming a bad file."""
    from .image_input import to_rgb_uint8

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image file {path} is a directory")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_uint8(im, f"image file {path}")
    except FileNotFoundError:
        raise ValueError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def _load_numpy(path: Path) -> np.ndarray:
    """The array of a .npy, or the first array of a .npz (no pickles); ValueError naming the
    file on anything numpy cannot read."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if not z.files:
                raise ValueError(f"proposals file {path} holds no arrays")
            return z[z.files[0]]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if str(e).startswith(f"proposals file {path}"):
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read proposals file {path} as {path.suffix}: {first}"
                         ) from None


def read_proposals(path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool masks, N >= 1, from .npy / .npz (first array; bool or integer 0/1 or
    0/255, `method.select.binary_masks`) or a COCO-style RLE JSON list of one image
    (`iterprime_jax.evaluation.proposals.read_proposals_json`, the reader of the evaluator).
    ValueError naming the file otherwise."""
    from .method.select import check_proposals

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"proposals file {path} is a directory; give a .npy, .npz or .json "
                         "file")
    if not path.exists():
        raise ValueError(f"proposals file {path} does not exist")
    if path.suffix in (".npy", ".npz"):
        arr = _load_numpy(path)
    elif path.suffix == ".json":
        from .evaluation.proposals import read_proposals_json

        arr = read_proposals_json(path, hw)
    else:
        raise ValueError(f"proposals file {path}: expected .npy, .npz or .json")
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[1:] != hw:
        raise ValueError(f"proposals in {path} have shape {arr.shape}, expected (N, {hw[0]}, "
                         f"{hw[1]}) for the image")
    if arr.shape[0] == 0:
        raise ValueError(f"proposals file {path} holds no masks; leave out --proposals for "
                         "the threshold baseline")
    return check_proposals(arr, hw, f"proposals in {path}")


#: Mask file formats that store the mask exactly (a lossy one such as JPEG would not).
LOSSLESS_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".pbm", ".pgm", ".ppm", ".pnm")


def check_out_path(out: str | Path) -> Path:
    """The mask path of `--out`, checked before any compute: a lossless image format
    (`LOSSLESS_SUFFIXES`; JPEG and other lossy formats are refused, a mask must be exact), a
    folder that is (or can be made) a writable directory. ValueError naming --out otherwise."""
    import os
    import tempfile

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give the mask's file name")
    if out.suffix.lower() not in LOSSLESS_SUFFIXES:
        lossy = out.suffix.lower() in Image.registered_extensions()
        raise ValueError(f"--out {out}: "
                         + (f"{out.suffix} is a lossy or unsupported format for masks, which "
                            "must be stored exactly; " if lossy else
                            f"needs an image file extension (got {out.suffix or 'none'}); ")
                         + "use .png")
    parent = out.parent
    for p in (parent, *parent.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"--out {out}: {p} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create or write to the folder {parent} "
                         f"({e.strerror or os.strerror(e.errno or 0)})") from None
    return out


def check_itm_model(model: Any, path: str | Path) -> None:
    """ValueError unless `model` is an ITM model (BLIP or ALBEF), naming the weights dir."""
    from .models.loaded import Model

    if not isinstance(model, Model):
        raise ValueError(f"--weights {path} is a {type(model.config).__name__} checkpoint; "
                         "IteRPrimE needs an image-text matching (BLIP) model there")


def compute_proposals(weights: str | Path, image: np.ndarray, config: Any,
                      save: str | Path | None = None, precision: str = "highest"
                      ) -> np.ndarray:
    """(Q, H, W) proposals of `image` by the Mask2Former in `weights` at the matmul
    `precision`; saved to `save`."""
    from .evaluation.proposer import encode_masks, open_proposer

    proposer, _ = open_proposer(weights, config, max_batch=1, precision=precision)
    props = proposer([image])[0]
    log.info("%d proposals from %s (%d non-empty)", len(props), weights,
             int(props.any(axis=(1, 2)).sum()))
    if save is not None:
        items = [{"image_id": 0, "segmentation": r} for r in encode_masks(props)]
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_text(json.dumps(items))
        log.info("wrote proposals to %s", save)
    return props


def main(argv: list[str] | None = None) -> int:
    """The CLI; exit status 0, 2 on bad input, 130 when interrupted (one log line each)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The CLI's flags (the method's and the proposer's from `iterprime_jax.cli_args`)."""
    from .cli_args import add_method_args, add_precision_arg, add_proposer_args

    ap = argparse.ArgumentParser(prog="python -m iterprime_jax.segment_cli",
                                 description="IteRPrimE: segment one object in one image.")
    ap.add_argument("--weights", required=True, help="converted weights dir")
    ap.add_argument("--image", required=True,
                    help="the photo (any format PIL reads: PNG, JPEG, ...)")
    ap.add_argument("--text", required=True, help="referring expression")
    ap.add_argument("--proposals", default=None,
                    help=".npy/.npz (N,H,W) bool or 0/1, 0/255 integer masks, or a COCO-style "
                         "RLE .json of this image")
    ap.add_argument("--out", required=True,
                    help="mask path, a lossless format (.png; JPEG refused); overlay beside it")
    add_precision_arg(ap)
    add_method_args(ap)
    add_proposer_args(ap, "also write the computed proposals to FILE (COCO-style RLE JSON, "
                          "image_id 0)")
    return ap


def _main(argv: list[str] | None = None) -> int:
    from .cli_args import apply_stanza_dir, quiet_third_party_logs
    from .method.language import ParserUnavailableError
    from .visualize import overlay

    args = build_parser().parse_args(argv)
    apply_stanza_dir(args)
    quiet_third_party_logs()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = check_out_path(args.out)
        image, res = _segment(args)
    except (ValueError, ParserUnavailableError) as e:
        log.error("%s", e)
        return 2
    Image.fromarray((res.mask * 255).astype(np.uint8)).save(out)
    ov = out.with_name(out.stem + ".overlay.png")
    Image.fromarray(overlay(image, res.heatmap, res.mask)).save(ov)
    log.info("primary word %r, %d IGRS passes accepted, proposal %d, mask area %d px -> %s, %s",
             res.primary_word, res.iterations, res.proposal_index, int(res.mask.sum()), out, ov)
    return 0


def _segment(args: argparse.Namespace) -> tuple[np.ndarray, Any]:
    """The checked flags -> (the image (H, W, 3) uint8, its `SegmentResult`); ValueError on a
    bad input, warnings logged one line each."""
    from .cli_args import method_overrides, propose_config_from_args
    from .method.pipeline import segment
    from .method.settings import resolve_method
    from .models.loading import load

    pconfig = propose_config_from_args(args)
    if args.proposals is not None and args.proposer_weights is not None:
        raise ValueError("give either --proposals FILE or --proposer-weights DIR, not both")
    if args.save_proposals is not None and args.proposer_weights is None:
        raise ValueError("--save-proposals needs --proposer-weights (proposals computed "
                         "from the image)")
    model = load(args.weights, precision=args.precision)
    check_itm_model(model, args.weights)
    image = read_image(args.image)
    if args.proposer_weights is not None:
        props = compute_proposals(args.proposer_weights, image, pconfig,
                                  args.save_proposals, args.precision)
    else:
        props = None if args.proposals is None else read_proposals(args.proposals,
                                                                   image.shape[:2])
    text_config = model.config.text
    cfg = resolve_method(args.weights, text_config.num_hidden_layers,
                         method_overrides(args), text_config.max_position_embeddings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = segment(model, image, args.text, props, cfg)
    for w in caught:  # one log line each (e.g. a truncated expression), no source line
        log.warning("%s", w.message)
    return image, res


if __name__ == "__main__":
    sys.exit(main())
