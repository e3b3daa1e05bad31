"""Image-level multi-label pretraining of the small ViT on fresh ShapesRef scenes.

BLIP's ViT starts from an image classifier; ours starts from a classifier of *which* shapes,
colours, shape-colour pairs and shape-size pairs are present in a scene (labels of the whole
image, never of a place in it). Scenes are generated on the fly: a buffer of
`pretrain_buffer` scenes of which `pretrain_fresh` are replaced by new ones at every step, so no
scene is seen more than a few times. The head reads the max over the patch tokens.

    python -m shapesref.training.pretrain --out vision.msgpack [--pretrain-steps 2000]

writes the ViT parameters (`vision_model` subtree, flax msgpack) and `vision.msgpack.json` (the
recipe and the held-out per-label accuracy history: 1,000 scenes never trained on).
`python -m shapesref.training --vision-init vision.msgpack` starts the ITM model from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

import shapesref as sr
from iterprime_jax.models.blip.config import BlipConfig
from iterprime_jax.models.blip.modeling import encode_image

from .config import TrainConfig, model_config
from .data import normalise_images
from .model_init import init_model

log = logging.getLogger(__name__)

#: Label groups: s = shape present, c = colour present, sc = shape+colour, ss = shape+size.
LABEL_GROUPS: tuple[str, ...] = ("s", "c", "sc", "ss")


def presence_labels(cfg: sr.ShapesRefConfig) -> list[str]:
    """Names of the multi-label targets, e.g. "s:circle", "sc:circle:red", "ss:circle:small"."""
    return ([f"s:{s}" for s in cfg.shapes] + [f"c:{c}" for c in cfg.colours]
            + [f"sc:{s}:{c}" for s in cfg.shapes for c in cfg.colours]
            + [f"ss:{s}:{z}" for s in cfg.shapes for z in sr.SIZES])


def scene_labels(scene: sr.Scene, labels: Sequence[str]) -> np.ndarray:
    """(len(labels),) float32 0/1: which labels hold somewhere in the scene."""
    index = {name: i for i, name in enumerate(labels)}
    y = np.zeros(len(labels), np.float32)
    for o in scene.objects:
        for name in (f"s:{o.shape}", f"c:{o.colour}", f"sc:{o.shape}:{o.colour}",
                     f"ss:{o.shape}:{o.size}"):
            y[index[name]] = 1.0
    return y


def presence_batch(rng: np.random.Generator, cfg: sr.ShapesRefConfig, labels: Sequence[str],
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` fresh scenes (kinds at random): images (n, H, W, 3) uint8 and labels (n, L)."""
    images, ys = [], []
    for _ in range(n):
        scene = sr.generate_scene(rng, cfg, sr.KINDS[int(rng.integers(len(sr.KINDS)))])
        images.append(scene.image)
        ys.append(scene_labels(scene, labels))
    return np.stack(images), np.stack(ys)


def _logits(params: dict, config: BlipConfig, pixels: jax.Array) -> jax.Array:
    """(B, L) label logits: linear head on the max over patch tokens of the ViT output."""
    embeds = encode_image({"vision_model": params["vision_model"]}, config, pixels)[:, 1:]
    return embeds.max(1) @ params["head"]["kernel"] + params["head"]["bias"]


def _loss(params: dict, config: BlipConfig, pixels: jax.Array, y: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(_logits(params, config, pixels), y).mean()


def label_accuracy(params: dict, config: BlipConfig, images: np.ndarray, y: np.ndarray,
                   labels: Sequence[str], batch: int = 250) -> dict[str, float]:
    """Per-label accuracy (logit > 0 vs truth), averaged within each of `LABEL_GROUPS`."""
    logits = jax.jit(_logits, static_argnums=1)
    pred = np.concatenate([np.asarray(logits(params, config,
                                             normalise_images(images[i:i + batch], config)))
                           for i in range(0, len(images), batch)]) > 0
    acc = (pred == (y > 0.5)).mean(0)
    return {g: float(acc[[i for i, name in enumerate(labels) if name.split(":")[0] == g]].mean())
            for g in LABEL_GROUPS}


def pretrain_vision(recipe: TrainConfig, eval_every: int = 250
                    ) -> tuple[dict, list[dict[str, float]]]:
    """Trains the ViT of `model_config(recipe)` (initialised as `init_model` does) on scene-level
    presence labels for `recipe.pretrain_steps` steps; returns (the `vision_model` params, history
    of held-out per-group label accuracy)."""
    config = model_config(recipe)
    cfg = sr.ShapesRefConfig(image_size=recipe.image_size)
    labels = presence_labels(cfg)
    full = init_model(recipe, config, jax.random.PRNGKey(recipe.seed))
    w = config.vision.hidden_size
    params = {"vision_model": full["vision_model"],
              "head": {"kernel": jax.random.normal(jax.random.PRNGKey(recipe.seed + 1),
                                                   (w, len(labels))) / np.sqrt(w),
                       "bias": jnp.zeros(len(labels))}}
    warmup = min(200, recipe.pretrain_steps // 10 + 1)
    sched = optax.warmup_cosine_decay_schedule(0.0, recipe.pretrain_lr, warmup,
                                               max(recipe.pretrain_steps, 2),
                                               recipe.pretrain_lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(recipe.clip),
                      optax.adamw(sched, weight_decay=recipe.weight_decay))
    opt_state = opt.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))  # the optimizer closed over
    def step(params: dict, opt_state: Any, pixels: jax.Array, y: jax.Array):
        loss, grads = jax.value_and_grad(_loss)(params, config, pixels, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    held_images, held_y = presence_batch(np.random.default_rng([recipe.seed, 999]), cfg, labels,
                                         1000)
    rng = np.random.default_rng([recipe.seed, 123])
    buf_images, buf_y = presence_batch(rng, cfg, labels, recipe.pretrain_buffer)
    history: list[dict[str, float]] = []
    for s in range(1, recipe.pretrain_steps + 1):
        new_images, new_y = presence_batch(rng, cfg, labels, recipe.pretrain_fresh)
        slot = rng.integers(0, len(buf_images), recipe.pretrain_fresh)
        buf_images[slot], buf_y[slot] = new_images, new_y
        pick = rng.integers(0, len(buf_images), recipe.batch_size)
        params, opt_state, loss = step(params, opt_state,
                                       normalise_images(buf_images[pick], config), buf_y[pick])
        if s % eval_every == 0 or s == recipe.pretrain_steps:
            acc = label_accuracy(params, config, held_images, held_y, labels)
            history.append({"step": s, "loss": float(loss), **acc})
            log.info("pretrain step %d: loss %.4f, held-out label accuracy %s", s, float(loss),
                     {k: round(v, 4) for k, v in acc.items()})
    return jax.device_get(params["vision_model"]), history


def save_vision(path: str | Path, vision: dict) -> None:
    Path(path).write_bytes(serialization.msgpack_serialize(jax.device_get(vision)))


def load_vision(path: str | Path) -> dict:
    """The `vision_model` params written by `save_vision` (nested dict of arrays)."""
    return serialization.msgpack_restore(Path(path).read_bytes())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m shapesref.training.pretrain",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output file (vision.msgpack)")
    for f in dataclasses.fields(TrainConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)),
                        default=getattr(d, f.name), help=f"(default {getattr(d, f.name)})")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recipe = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    t0 = time.perf_counter()
    vision, history = pretrain_vision(recipe)
    save_vision(args.out, vision)
    record = {"command": "python -m shapesref.training.pretrain " + " ".join(argv),
              "wall_time_s": time.perf_counter() - t0, "recipe": recipe.to_dict(),
              "labels": presence_labels(sr.ShapesRefConfig(image_size=recipe.image_size)),
              "history": history}
    Path(str(args.out) + ".json").write_text(json.dumps(record, indent=1))
    log.info("wrote %s in %.0fs", args.out, record["wall_time_s"])
    return record


if __name__ == "__main__":
    main()
