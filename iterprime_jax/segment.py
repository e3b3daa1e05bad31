"""One-image CLI: `python -m iterprime_jax.segment --weights DIR --image PATH --text "..."
[--proposals FILE] --out OUT.png` writes the mask PNG and `OUT.overlay.png` (heat map and mask
outline on the image).

(The library function is `iterprime_jax.segment`, defined in `iterprime_jax.method.pipeline`.)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("iterprime_jax.segment")


def read_image(path: str | Path) -> np.ndarray:
    """Any PIL-readable file -> (H, W, 3) uint8; a clear error naming a bad file."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ValueError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from None


def read_proposals(path: str | Path, hw: tuple[int, int]) -> np.ndarray:
    """(N, H, W) masks from .npy / .npz (first array) or a COCO-style RLE JSON list
    (`iterprime_jax.evaluation.proposals.read_proposals_json`, the reader of the evaluator)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"proposals file {path} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            arr = z[z.files[0]]
    elif path.suffix == ".json":
        from .evaluation.proposals import read_proposals_json

        arr = read_proposals_json(path, hw)
    else:
        raise ValueError(f"proposals file {path}: expected .npy, .npz or .json")
    arr = np.asarray(arr).astype(bool)
    if arr.ndim != 3 or arr.shape[1:] != hw:
        raise ValueError(f"proposals in {path} have shape {arr.shape}, expected (N, {hw[0]}, "
                         f"{hw[1]}) for the image")
    return arr


def main(argv: list[str] | None = None) -> int:
    from .cli_args import add_method_args, method_overrides

    ap = argparse.ArgumentParser(description="IteRPrimE: segment one object in one image.")
    ap.add_argument("--weights", required=True, help="converted weights dir")
    ap.add_argument("--image", required=True)
    ap.add_argument("--text", required=True, help="referring expression")
    ap.add_argument("--proposals", default=None, help=".npy/.npz (N,H,W) or RLE .json")
    ap.add_argument("--out", required=True, help="mask PNG path (overlay beside it)")
    add_method_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from .method.pipeline import segment
    from .models.loading import load, resolve_method
    from .visualize import overlay

    try:
        model = load(args.weights)
        image = read_image(args.image)
        props = None if args.proposals is None else read_proposals(args.proposals,
                                                                   image.shape[:2])
        tc = model.config.text
        cfg = resolve_method(args.weights, tc.num_hidden_layers, method_overrides(args),
                             tc.max_position_embeddings)
        res = segment(model, image, args.text, props, cfg)
    except ValueError as e:
        log.error("%s", e)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((res.mask * 255).astype(np.uint8)).save(out)
    ov = out.with_name(out.stem + ".overlay.png")
    Image.fromarray(overlay(image, res.heatmap, res.mask)).save(ov)
    log.info("primary word %r, %d IGRS passes accepted, proposal %d, mask area %d px -> %s, %s",
             res.primary_word, res.iterations, res.proposal_index, int(res.mask.sum()), out, ov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
