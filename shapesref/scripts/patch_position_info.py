"""Patch position information of trained / pretrained ViTs: held-out accuracy of a linear
read-out of each output patch token's row and column (`patch_position_information`; chance 0.2
on the 5x5 grid). A research diagnostic of the ShapesRef training rounds (docs/shapesref.md),
kept here, outside the library.

    python shapesref/scripts/patch_position_info.py NAME=PATH [NAME=PATH ...] [--out FILE]

PATH: a saved model directory (`iterprime_jax.load`), a `vision.msgpack` from
`python -m shapesref.training.pretrain` (its `.json` gives the recipe), or `init:normal` /
`init:sincos:SCALE` (the shipped recipe's ViT at initialisation, seed 0). Prints a table and
writes JSON (the command, per model: source, width, layers, row and column accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import iterprime_jax
import shapesref as sr
from iterprime_jax.models.blip.config import BlipConfig
from iterprime_jax.models.blip.modeling import encode_image
from iterprime_jax.types import Params
from shapesref import training
from shapesref.training.data import normalise_images


def patch_position_information(vision: Params, config: BlipConfig, num_images: int = 300,
                               seed: int = 0) -> dict[str, float]:
    """How well the ViT's output patch tokens encode *which patch* they are: held-out accuracy
    of a least-squares linear read-out of the patch row and of the column from the token
    (fresh ShapesRef scenes, the first two thirds fit, the rest scored; chance 1/grid).

    A diagnostic, not a training signal: it is about the grid, not about where any object is.
    A tower that keeps little of it cannot tell "left" from "right" or "above" from "below"
    (image-level presence pretraining, which pools over patches, washes it out)."""
    cfg = sr.ShapesRefConfig(image_size=config.vision.image_hw[0])
    rng = np.random.default_rng([seed, 31])
    images = np.stack([sr.generate_scene(rng, cfg, sr.KINDS[i % 3]).image
                       for i in range(num_images)])
    tokens = np.asarray(encode_image({"vision_model": vision}, config,
                                     jnp.asarray(normalise_images(images, config))))[:, 1:]
    n, p, w = tokens.shape
    gh, gw = config.vision.grid
    x = np.concatenate([tokens.reshape(-1, w), np.ones((n * p, 1), np.float32)], 1)
    fit = (2 * n // 3) * p
    out = {}
    for name, y, k in (("row", np.tile(np.arange(p) // gw, n), gh),
                       ("column", np.tile(np.arange(p) % gw, n), gw)):
        coef, *_ = np.linalg.lstsq(x[:fit], np.eye(k)[y[:fit]], rcond=None)
        out[name] = float(((x[fit:] @ coef).argmax(1) == y[fit:]).mean())
    return out



def _vision(spec: str) -> tuple[dict, object]:
    if spec.startswith("init:"):
        kind, _, scale = spec.removeprefix("init:").partition(":")
        tc = training.TrainConfig(pos_init=kind, pos_scale=float(scale or 1.0))
        config = training.model_config(tc)
        return training.init_model(tc, config, jax.random.PRNGKey(0))["vision_model"], config
    path = Path(spec)
    if path.is_dir():
        model = iterprime_jax.load(path)
        return model.params["vision_model"], model.config
    tc = training.TrainConfig.from_dict(
        json.loads(Path(str(path) + ".json").read_text())["recipe"])
    return training.load_vision(path), training.model_config(tc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--out", default=None, help="JSON record to write")
    args = ap.parse_args()
    rows = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        vision, config = _vision(path)
        info = patch_position_information(vision, config)
        rows[name] = {"source": path, "width": config.vision.hidden_size,
                      "layers": config.vision.num_hidden_layers, **info}
    print(f"{'model':<28}{'width':>6}{'layers':>7}{'row':>7}{'column':>8}")
    for name, r in rows.items():
        print(f"{name:<28}{r['width']:>6}{r['layers']:>7}{r['row']:>7.3f}{r['column']:>8.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"command": "python shapesref/scripts/patch_position_info.py " + " ".join(sys.argv[1:]),
             "models": rows}, indent=1))


if __name__ == "__main__":
    main()
