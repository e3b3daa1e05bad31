"""Train the small ShapesRef ITM model: BLIP architecture (same Flax code), tiny config.

Localisation-free throughout: the model never sees a mask, a box or a place. Three stages:

1. image-level multi-label pretraining of the ViT on fresh scenes (`training.pretrain`: which
   shapes / colours / shape-colour / shape-size pairs are present), as BLIP's ViT starts from an
   image classifier; or `--vision-init FILE` from `python -m shapesref.training.pretrain`;
2. `caption_steps` of image-text matching on object captions ("red circle", "the small cross"
   vs. absent combinations, `data.caption_pool`): a curriculum;
3. `steps` of image-text matching on referring expressions: positives are expressions of the
   image's objects, negatives hard negatives certified false in the image (swapped colour /
   shape / size / position word / relation / landmark attribute, extra shape / size / relation
   swaps, absent attribute combinations, expressions of other images).

    python -m shapesref.training --out weights/shapesref-itm

writes orbax params + `blip_config.json` (`iterprime_jax.models.convert.save_params`), the
tokenizer (`vocab.txt`, `tokenizer_config.json`) and `training_log.json` (recipe, command, wall
time, the pretraining's held-out label accuracy, loss / accuracy history, held-out ITM accuracy
overall and per hard-negative type, and a localisation probe: the fraction of ShapesRef
train-split sentences whose Grad-CAM heat peaks inside the referred object's mask, per text
layer) and `method.json` (the Grad-CAM layer the probe recommends; chosen on the ShapesRef train
split, which the ITM training pool never draws from, so val stays untouched).

Data: pools of scenes are generated up front (numpy, in worker processes), with the prompt
template of the pipeline (`IteRPrimEConfig().template`) applied before tokenisation; batches are
sampled from them (50% matches). Everything is seeded by `--seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iterprime_jax.method.settings import METHOD_JSON
from iterprime_jax.models.blip.config import BlipConfig
from iterprime_jax.models.blip.modeling import itm_logits
from iterprime_jax.models.conversion import restore_params, save_params
from iterprime_jax.types import Params

from .config import DEFAULT_VOCAB, LOG_NAME, TrainConfig, make_tokenizer, model_config
from .data import Pool, PoolLike, build_pool, caption_pool, normalise_images
from .diagnostics import diagnose, recommended_method
from .model_init import init_model
from .pretrain import load_vision, pretrain_vision
from .stream import StreamPool

log = logging.getLogger(__name__)


def lr_schedule(recipe: TrainConfig) -> optax.Schedule:
    """Linear warmup (at most a tenth of the steps), then cosine decay to 2% of `lr`, over the
    caption stage and the ITM stage together."""
    total = recipe.caption_steps + recipe.steps
    warmup = min(recipe.warmup, max(1, total // 10))
    return optax.warmup_cosine_decay_schedule(0.0, recipe.lr, warmup, max(total, warmup + 1),
                                              end_value=recipe.lr * 0.02)


def make_optimizer(recipe: TrainConfig) -> optax.GradientTransformation:
    sched = lr_schedule(recipe)

    def decay_mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: getattr(p[-1], "key", "") in ("kernel",), params)

    return optax.chain(optax.clip_by_global_norm(recipe.clip),
                       optax.adamw(sched, weight_decay=recipe.weight_decay, mask=decay_mask))


def _loss_fn(params: Params, config: BlipConfig, pixels: jax.Array, ids: jax.Array,
             mask: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = itm_logits(params, config, pixels, ids, mask)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = (jnp.argmax(logits, -1) == labels).mean()
    return loss, acc


class TrainState(NamedTuple):
    """What a training step updates: the model's parameters and the optimizer's state."""

    params: Params
    opt_state: Any


#: ``step(state, pixels (B, H, W, 3) float32, ids (B, L) int32, mask (B, L) int32,
#: labels (B,) int32) -> (state, loss, accuracy)`` (scalars, batch means).
TrainStep = Callable[..., tuple[TrainState, jax.Array, jax.Array]]


def make_train_step(config: BlipConfig, opt: optax.GradientTransformation) -> TrainStep:
    """The jitted ITM training step of model `config` with the optimizer `opt` closed over:
    one compilation per call of this function (per run), whatever `opt` is. The state is
    donated: its buffers are reused for the new state, so the caller keeps only the state
    returned."""

    def step(state: TrainState, pixels: jax.Array, ids: jax.Array, mask: jax.Array,
             labels: jax.Array) -> tuple[TrainState, jax.Array, jax.Array]:
        (loss, acc), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
            state.params, config, pixels, ids, mask, labels)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss, acc

    return jax.jit(step, donate_argnums=0)


def init_state(params: Params, opt: optax.GradientTransformation) -> TrainState:
    """A `TrainState` of a device copy of `params` (the step donates it, the caller's
    `params` stay valid) and `opt`'s initial state."""
    params = jax.tree_util.tree_map(jnp.array, params)  # copies
    return TrainState(params, opt.init(params))


def calibrate_steps(recipe: TrainConfig, config: BlipConfig, params: Params, pool: PoolLike,
                    budget_s: float, repeats: int = 40) -> tuple[int, float]:
    """Expression-stage steps such that the caption and expression stages together fit
    `budget_s` seconds: (steps, measured seconds per step). Times `repeats` steps (after one
    compiling step) on batches of `pool`, on a copy of `params` that is thrown away."""
    opt = make_optimizer(recipe)
    step = make_train_step(config, opt)
    state = init_state(params, opt)
    rng = np.random.default_rng([recipe.seed, 99])
    for i in range(repeats + 1):
        if i == 1:
            jax.block_until_ready(state)
            t0 = time.perf_counter()
        images, ids, mask, labels = pool.sample(rng, recipe.batch_size)
        state, _, _ = step(state, normalise_images(images, config), ids, mask, labels)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t0) / repeats
    return max(1, int(budget_s / per_step) - recipe.caption_steps), per_step


def train(recipe: TrainConfig, tokenizer: Any | None = None, pool: PoolLike | None = None,
          progress: bool = True, vision_init: Params | None = None,
          captions: Pool | None = None,
          checkpoint: Callable[[int, Params, BlipConfig], None] | None = None,
          checkpoint_every: int = 0, time_budget: float | None = None
          ) -> tuple[Params, BlipConfig, list[dict[str, float]], TrainConfig]:
    """Train; returns (params, model config, history of logged steps).

    The first `recipe.caption_steps` steps draw from `captions` (default: `caption_pool` of
    `recipe.caption_scenes` scenes), the remaining `recipe.steps` from `pool` (default:
    `build_pool`).
    `vision_init`: `vision_model` params to start the ViT from (`pretrain.pretrain_vision`);
    None: from scratch. `checkpoint(step, params, config)` is called every `checkpoint_every`
    steps. history rows: step, stage, loss and accuracy (means over the last `log_every`
    steps), lr. `time_budget`: seconds for the caption and expression stages together;
    `recipe.steps` is then replaced by what fits (`calibrate_steps`). Returns (params, model
    config, history, the recipe actually run).
    """
    from tqdm.auto import tqdm

    config = model_config(recipe)
    pool, captions = _pools(recipe, tokenizer, pool, captions)
    key = jax.random.PRNGKey(recipe.seed)
    params = init_model(recipe, config, key)
    if vision_init is not None:
        params = {**params, "vision_model": jax.tree_util.tree_map(jnp.asarray, vision_init)}
    if time_budget is not None:
        steps, per_step = calibrate_steps(recipe, config, params, pool, time_budget)
        log.info("time budget %.0fs at %.2f ms/step: %d expression steps", time_budget,
                 1e3 * per_step, steps)
        recipe = dataclasses.replace(recipe, steps=steps)
    opt = make_optimizer(recipe)
    train_step = make_train_step(config, opt)  # compiled once for the run
    state = init_state(params, opt)
    del params
    rng = np.random.default_rng([recipe.seed, 1])
    history: list[dict[str, float]] = []
    losses: list[jax.Array] = []
    accs: list[jax.Array] = []
    sched = lr_schedule(recipe)
    total = recipe.caption_steps + recipe.steps
    bar = tqdm(range(1, total + 1), desc="train ITM", disable=not progress, unit="step")
    for step in bar:
        stage = "captions" if step <= recipe.caption_steps else "expressions"
        src = captions if stage == "captions" else pool
        assert src is not None
        images, ids, mask, labels = src.sample(rng, recipe.batch_size)
        state, loss, acc = train_step(state, normalise_images(images, config), ids, mask, labels)
        losses.append(loss)
        accs.append(acc)
        if step % recipe.log_every == 0 or step == total or step == recipe.caption_steps:
            history.append(_log_row(step, stage, losses, accs, float(sched(step)), bar))
            losses, accs = [], []
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            checkpoint(step, jax.device_get(state.params), config)
    return jax.device_get(state.params), config, history, recipe


def _pools(recipe: TrainConfig, tokenizer: Any | None, pool: PoolLike | None,
           captions: Pool | None) -> tuple[PoolLike, Pool | None]:
    """The expression pool and the caption pool of `train`: the ones given, else built."""
    tokenizer = make_tokenizer() if tokenizer is None else tokenizer
    if pool is None:
        t0 = time.perf_counter()
        pool = build_pool(recipe, tokenizer, recipe.pool_scenes, recipe.seed)
        log.info("generated %d training scenes, %d texts (%d positives, %d negatives) in %.1fs",
                 len(pool), len(pool.texts), len(pool.pos), len(pool.neg),
                 time.perf_counter() - t0)
    if captions is None and recipe.caption_steps:
        captions = caption_pool(recipe, tokenizer, recipe.caption_scenes, recipe.seed + 1)
    return pool, captions


def _log_row(step: int, stage: str, losses: list[jax.Array], accs: list[jax.Array], lr: float,
             bar: Any) -> dict[str, Any]:
    """A history row: the mean loss and accuracy of the steps since the last row (fetched
    from the device here, once per row), shown on the progress bar and logged."""
    lv = float(np.mean(jax.device_get(losses)))
    av = float(np.mean(jax.device_get(accs)))
    bar.set_postfix(loss=f"{lv:.3f}", acc=f"{av:.3f}")
    log.info("step %d (%s): loss %.4f, ITM accuracy %.3f, lr %.2e", step, stage, lv, av, lr)
    return {"step": step, "stage": stage, "loss": lv, "accuracy": av, "lr": lr}


def save_model(out_dir: str | Path, params: Params, config: BlipConfig,
               vocab: str | Path = DEFAULT_VOCAB) -> Path:
    """Orbax params + blip_config.json (`save_params`) + vocab.txt + tokenizer_config.json,
    loadable with `iterprime_jax.load(out_dir)`."""
    out = save_params(out_dir, params, config)
    shutil.copyfile(vocab, out / "vocab.txt")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512,
         "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
         "unk_token": "[UNK]", "mask_token": "[MASK]"}, indent=2))
    return out


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m shapesref.training",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (weights/shapesref-itm)")
    ap.add_argument("--vocab", default=str(DEFAULT_VOCAB), help="WordPiece vocab.txt")
    ap.add_argument("--probe-images", type=int, default=200,
                    help="ShapesRef images for the localisation probe (0 = skip)")
    ap.add_argument("--probe-split", default="train",
                    help="ShapesRef split of the probe (it picks method.json's layer)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    ap.add_argument("--vision-init", default=None,
                    help="ViT params from `python -m shapesref.training.pretrain --out FILE` "
                         "(default: run that pretraining first, `--pretrain-steps`; 'none': "
                         "ViT from scratch)")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="save the weights to --out every N steps (0: only at the end)")
    ap.add_argument("--stream-workers", type=int, default=0,
                    help="generate the expression pool in N worker processes while training "
                         "runs (`training.stream.StreamPool`; for an accelerator); 0: "
                         "`--pool-scenes` scenes up front")
    ap.add_argument("--stream-chunk", type=int, default=250, help="scenes per streamed chunk")
    ap.add_argument("--stream-scenes", type=int, default=200_000,
                    help="scenes the stream makes at most")
    ap.add_argument("--draws-per-chunk", type=int, default=6400,
                    help="(image, text) pairs drawn before the next streamed chunk joins")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for the caption + expression stages: `--steps` is replaced "
                         "by what fits, timed on this machine (recorded in the log)")
    ap.add_argument("--no-diagnose", action="store_true",
                    help="skip the diagnostics (run them later with --diagnose-only)")
    ap.add_argument("--diagnose-only", action="store_true",
                    help="only run the diagnostics of the model in --out and add them to its "
                         "training_log.json (and method.json)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        ap.add_argument(flag, type=type(getattr(d, f.name)), default=getattr(d, f.name),
                        help=f"(default {getattr(d, f.name)})")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.diagnose_only:
        return diagnose_saved(args.out, args.probe_images, args.probe_split, args.vocab)
    recipe = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    t0 = time.perf_counter()
    tokenizer = make_tokenizer(args.vocab)
    pool: PoolLike | None = None
    if args.stream_workers:
        chunks = max(1, args.stream_scenes // args.stream_chunk)
        pool = StreamPool(recipe, args.vocab, recipe.seed, args.stream_workers, args.stream_chunk,
                          chunks, min(chunks, 8), args.draws_per_chunk)
    vision, pretraining = None, None
    if args.vision_init == "none" or (args.vision_init is None and not recipe.pretrain_steps):
        pass
    elif args.vision_init is not None:
        vision = load_vision(args.vision_init)
        meta = Path(str(args.vision_init) + ".json")
        pretraining = json.loads(meta.read_text()) if meta.is_file() else None
    else:
        vision, hist = pretrain_vision(recipe)
        pretraining = {"recipe": recipe.to_dict(), "history": hist}

    def checkpoint(step: int, params: dict, config: BlipConfig) -> None:
        save_model(args.out, params, config, args.vocab)
        (Path(args.out) / "checkpoint.json").write_text(json.dumps({"step": step}))
        log.info("checkpoint at step %d in %s", step, args.out)

    t1 = time.perf_counter()
    try:
        params, config, history, recipe = train(
            recipe, tokenizer, pool, progress=not args.no_progress, vision_init=vision,
            checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
            time_budget=args.time_budget)
    finally:
        if args.stream_workers:
            pool.close()  # type: ignore[union-attr]
    (Path(args.out) / "checkpoint.json").unlink(missing_ok=True)
    out = save_model(args.out, params, config, args.vocab)
    record = {
        "command": "python -m shapesref.training " + " ".join(argv),
        "wall_time_s": time.perf_counter() - t0,
        "train_time_s": time.perf_counter() - t1,
        "recipe": recipe.to_dict(),
        "model_config": config.to_dict(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "stream": ({"workers": args.stream_workers, "chunk": args.stream_chunk,
                    "scenes_joined": len(pool), "draws_per_chunk": args.draws_per_chunk,
                    "waits": pool.waits}  # type: ignore[union-attr]
                   if args.stream_workers else None),
        "vision_pretraining": pretraining,
        "history": history,
    }
    (out / LOG_NAME).write_text(json.dumps(record, indent=1))
    log.info("wrote %s in %.0fs", out, record["wall_time_s"])
    if args.no_diagnose:
        return record
    return diagnose_saved(out, args.probe_images, args.probe_split, args.vocab, params)


def diagnose_saved(out_dir: str | Path, probe_images: int = 200, probe_split: str = "train",
                   vocab: str | Path = DEFAULT_VOCAB, params: Params | None = None
                   ) -> dict[str, Any]:
    """Runs `diagnose` on the model saved in `out_dir` (its recipe from `training_log.json`),
    adds held-out ITM accuracy, per negative type and the localisation probe to that log and
    writes `method.json` (the probe's Grad-CAM layer). Returns the updated log."""
    out = Path(out_dir)
    record = json.loads((out / LOG_NAME).read_text())
    recipe = TrainConfig.from_dict(record["recipe"])
    config = BlipConfig.from_dict(record["model_config"])
    params = restore_params(out, config) if params is None else params
    tokenizer = make_tokenizer(vocab)
    t0 = time.perf_counter()
    diag = diagnose(params, config, tokenizer, recipe, probe_images, probe_split)
    itm, by_kind, probe = (diag["heldout_itm"], diag["heldout_itm_by_negative"],
                           diag["localisation_probe"])
    log.info("held-out ITM accuracy %.3f (match %.3f, mismatch %.3f)", itm["accuracy"],
             itm["accuracy_match"], itm["accuracy_mismatch"])
    log.info("held-out ITM accuracy by negative type: %s", "; ".join(
        f"{k}: " + ", ".join(f"{g} {v['accuracy']:.2f}" for g, v in d.items())
        for k, d in by_kind.items()))
    if probe is not None:
        log.info("localisation probe (heat argmax in target mask): best %s = %.3f; %s",
                 probe["best"], probe["hit_rate"][probe["best"]],
                 ", ".join(f"{k} {v:.3f}" for k, v in probe["hit_rate"].items()))
    record.update(heldout_itm=itm, heldout_itm_by_negative=by_kind, localisation_probe=probe,
                  diagnostics={"devices": [str(d) for d in jax.devices()],
                               "wall_time_s": time.perf_counter() - t0})
    (out / LOG_NAME).write_text(json.dumps(record, indent=1))
    if probe is not None:
        method = recommended_method(probe)
        (out / METHOD_JSON).write_text(json.dumps(method, indent=2) + "\n")
        log.info("wrote %s: %s", out / METHOD_JSON, method)
    return record


if __name__ == "__main__":
    main()
