"""Train the small ShapesRef ITM model: BLIP architecture (same Flax code), tiny config.

Image-text matching only: positives are expressions of the image's objects, negatives are hard
negatives certified false in the image (swapped colour / shape / size / position word / relation /
landmark attribute, absent attribute combinations, expressions of other images). The model never
sees a mask or a box. Its Grad-CAM over cross-attention is what IteRPrimE turns into masks.

    python -m iterprime_jax.train_itm --out weights/shapesref-itm

writes orbax params + `blip_config.json` (`iterprime_jax.convert.save_params`), the tokenizer
(`vocab.txt`, `tokenizer_config.json`) and `training_log.json` (recipe, command, wall time, loss /
accuracy history, held-out ITM accuracy, and a localisation probe: the fraction of ShapesRef
train-split sentences whose Grad-CAM heat peaks inside the referred object's mask, per text
layer) and `method.json` (the Grad-CAM layer the probe recommends; chosen on the ShapesRef train
split, which the ITM training pool never draws from, so val stays untouched).

Data: a pool of scenes is generated up front (numpy, in worker processes), with the prompt
template of the pipeline (`IteRPrimEConfig().template`) applied before tokenisation; batches are
sampled from the pool (50% matches). Everything is seeded by `--seed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import shapesref as sr
from .config import BlipConfig, IteRPrimEConfig, TextConfig, VisionConfig
from .convert import save_params
from .gradcam import gradcam_from_embeds
from .heat import heat_map
from .modeling import encode_image, init_params, itm_logits

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VOCAB",
    "Pool",
    "TrainConfig",
    "build_pool",
    "evaluate_itm",
    "localisation_probe",
    "main",
    "make_tokenizer",
    "recommended_method",
    "model_config",
    "save_model",
    "train",
]

#: bert-base-uncased WordPiece vocabulary (in the repository's test data).
DEFAULT_VOCAB = (Path(__file__).resolve().parents[1] / "tests" / "data"
                 / "bert-base-uncased-vocab.txt")
LOG_NAME = "training_log.json"
METHOD_NAME = "method.json"


# --------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole recipe; defaults are the shipped model's.

    Attributes:
      steps, batch_size, lr, warmup, weight_decay, clip: AdamW with linear warmup + cosine decay.
      width: hidden size of both encoders (MLP 4x); heads: attention heads of both.
      vision_layers, text_layers: depth (every text layer has cross-attention).
      patch_size: ViT patch (64x64 images -> (64 / patch)^2 patches).
      max_text_length: token bucket for training (prompt incl. [CLS]/[SEP]).
      max_position_embeddings: text positions (>= the pipeline's max_text_length, 40).
      pool_scenes: scenes generated for training; refs_per_scene: targets described per scene.
      other_neg_frac: share of negatives that are expressions of other scenes.
      attribute_frac: share of attribute scenes (the rest: position and relation, equally).
      shape_negatives: extra negatives per described target that swap only the shape word
        (certified false), on top of `max_negatives` (shape is the slowest attribute to learn).
      init_scale: multiplier on the default (lecun-normal) Dense init.
      pos_init: vision position embeddings' init: "normal" (std 1/sqrt(width)) or "sincos"
        (fixed-frequency 2D sine/cosine of the patch row and column, as in MAE/big_vision;
        still trained).
      seed: seeds data, init and batch order.
    """

    steps: int = 10000
    batch_size: int = 64
    lr: float = 7e-4
    warmup: int = 500
    weight_decay: float = 0.01
    clip: float = 1.0
    width: int = 64
    heads: int = 4
    vision_layers: int = 2
    text_layers: int = 3
    patch_size: int = 8
    image_size: int = 64
    max_text_length: int = 24
    max_position_embeddings: int = 64
    projection_dim: int = 32
    pool_scenes: int = 16000
    refs_per_scene: int = 2
    max_negatives: int = 8
    other_neg_frac: float = 0.25
    attribute_frac: float = 0.7
    shape_negatives: int = 0
    init_scale: float = 1.0
    pos_init: str = "normal"
    seed: int = 0
    log_every: int = 100
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_config(tc: TrainConfig) -> BlipConfig:
    """The BLIP config of the small model (bert-base-uncased vocabulary, 30524 like BLIP)."""
    w = tc.width
    vision = VisionConfig(image_size=tc.image_size, patch_size=tc.patch_size, hidden_size=w,
                          intermediate_size=4 * w, num_hidden_layers=tc.vision_layers,
                          num_attention_heads=tc.heads)
    text = TextConfig(vocab_size=30524, hidden_size=w, intermediate_size=4 * w,
                      num_hidden_layers=tc.text_layers, num_attention_heads=tc.heads,
                      max_position_embeddings=tc.max_position_embeddings,
                      encoder_hidden_size=w)
    return BlipConfig(vision=vision, text=text, projection_dim=tc.projection_dim)


def make_tokenizer(vocab: str | Path = DEFAULT_VOCAB) -> Any:
    """Slow BertTokenizer over a WordPiece vocab file (the fast one maps all to [UNK])."""
    from transformers import BertTokenizer

    return BertTokenizer(str(vocab), do_lower_case=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def false_variants(scene: sr.Scene, expr: sr.Expression, kind: str) -> list[sr.Expression]:
    """The one-word variants of `expr` of perturbation `kind` (`shapesref.perturbations`) that
    are clearly false in `scene`."""
    return [x for x in sr.perturbations(expr, scene.config)[kind] if expression_false(scene, x)]


def shape_swaps(scene: sr.Scene, exprs: Sequence[sr.Expression], n: int,
                rng: np.random.Generator) -> list[str]:
    """Up to `n` phrasings of `exprs` with only the shape word swapped, each clearly false."""
    out = [x for e in exprs for x in false_variants(scene, e, "shape")]
    phrased = [sr.phrasings(out[i]) for i in rng.permutation(len(out))[:n]]
    return [ph[int(rng.integers(len(ph)))] for ph in phrased]


def _gen_chunk(args: tuple[int, int, int, int, int, float, int, float, int]
               ) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
    """Scenes `start..start+n` of the pool: images, positive texts and negative texts."""
    seed, start, n, refs_per_scene, max_neg, other_frac, image_size, attr_frac, n_shape = args
    cfg = sr.ShapesRefConfig(image_size=image_size)
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    pos_all: list[list[str]] = []
    neg_all: list[list[str]] = []
    recent: list[tuple[sr.Expression, str]] = []  # expressions of earlier scenes of the chunk
    for i in range(n):
        rng = np.random.default_rng([seed, 7919, start + i])
        kind = "attribute" if rng.random() < attr_frac else sr.KINDS[1 + int(rng.integers(2))]
        scene = sr.generate_scene(rng, cfg, kind)
        images[i] = scene.image
        targets = [scene.targets[j] for j in rng.permutation(len(scene.targets))]
        pos: list[str] = []
        neg: list[str] = []
        for t in targets[:refs_per_scene]:
            ref = sr.make_ref(scene, t, rng)
            p, q = sr.matching_pairs(ref, rng, max_negatives=max_neg)
            pos += p
            neg += q
            if n_shape:
                neg += shape_swaps(scene, ref.expressions, n_shape, rng)
            recent += list(zip(ref.expressions, ref.sentences, strict=True))
        # negatives from other scenes: their expressions that are clearly false here
        n_other = int(round(other_frac / max(1e-6, 1 - other_frac) * len(neg)))
        others: list[str] = []
        for j in rng.permutation(len(recent))[: 6 * n_other]:
            e, s = recent[j]
            if len(others) >= n_other:
                break
            if s not in pos and expression_false(scene, e):
                others.append(s)
        recent = recent[-200:]
        pos = list(dict.fromkeys(pos))
        neg = [s for s in dict.fromkeys(neg + others) if s not in set(pos)]
        pos_all.append(pos)
        neg_all.append(neg)
    return images, pos_all, neg_all


def expression_false(scene: sr.Scene, expr: sr.Expression) -> bool:
    return sr.expression_truth(scene, expr) is False


@dataclasses.dataclass
class Pool:
    """Pre-generated training scenes with tokenised texts.

    images: (N, H, W, 3) uint8; ids/mask: (U, T) int32 over the unique texts; pos/neg: per scene
    int arrays of text indices, flattened with offsets (`pos_off[i]:pos_off[i+1]`).
    """

    images: np.ndarray
    ids: np.ndarray
    mask: np.ndarray
    texts: list[str]
    pos: np.ndarray
    pos_off: np.ndarray
    neg: np.ndarray
    neg_off: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, rng: np.random.Generator, batch: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8, ids, mask, labels): random scenes, 50% matching texts."""
        idx = rng.integers(0, len(self), batch)
        labels = (rng.random(batch) < 0.5).astype(np.int32)
        n_pos = self.pos_off[idx + 1] - self.pos_off[idx]
        n_neg = self.neg_off[idx + 1] - self.neg_off[idx]
        labels = np.where(n_neg == 0, 1, labels)
        u = rng.random(batch)
        pick_pos = self.pos[self.pos_off[idx] + (u * n_pos).astype(np.int64)]
        pick_neg = self.neg[self.neg_off[idx] + (u * np.maximum(n_neg, 1)).astype(np.int64)
                            % np.maximum(n_neg, 1)]
        t = np.where(labels == 1, pick_pos, pick_neg)
        return self.images[idx], self.ids[t], self.mask[t], labels


def tokenize_prompts(tokenizer: Any, texts: Sequence[str], max_len: int,
                     template: str = IteRPrimEConfig().template
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`[CLS] template(text) [SEP] [PAD]...` ids and attention mask, (U, max_len) int32."""
    ids = np.full((len(texts), max_len), int(tokenizer.pad_token_id), np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
        pieces = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(template.format(t)))
        row = [tokenizer.cls_token_id, *pieces[: max_len - 2], tokenizer.sep_token_id]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def build_pool(tc: TrainConfig, tokenizer: Any, n_scenes: int, seed: int,
               workers: int | None = None, chunk: int = 500) -> Pool:
    """Generate `n_scenes` scenes (seeded by `seed`, independent of `workers`) and tokenise."""
    workers = tc.workers if workers is None else workers
    jobs = [(seed, s, min(chunk, n_scenes - s), tc.refs_per_scene, tc.max_negatives,
             tc.other_neg_frac, tc.image_size, tc.attribute_frac, tc.shape_negatives)
            for s in range(0, n_scenes, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_gen_chunk, jobs))
    else:
        parts = [_gen_chunk(j) for j in jobs]
    images = np.concatenate([p[0] for p in parts])
    pos_lists = [x for p in parts for x in p[1]]
    neg_lists = [x for p in parts for x in p[2]]
    index: dict[str, int] = {}
    for lst in pos_lists + neg_lists:
        for s in lst:
            index.setdefault(s, len(index))
    texts = list(index)
    ids, mask = tokenize_prompts(tokenizer, texts, tc.max_text_length)

    def flat(lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        off = np.zeros(len(lists) + 1, np.int64)
        off[1:] = np.cumsum([len(x) for x in lists])
        return np.asarray([index[s] for x in lists for s in x], np.int64), off

    pos, pos_off = flat(pos_lists)
    neg, neg_off = flat(neg_lists)
    return Pool(images, ids, mask, texts, pos, pos_off, neg, neg_off)


def normalise_images(images: np.ndarray, config: BlipConfig) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 normalised like `preprocess_image` (images at model size)."""
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    return (images.astype(np.float32) / 255.0 - mean) / std


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def posemb_sincos_2d(gh: int, gw: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """(1, 1 + gh*gw, width) float32: row 0 (the CLS position) zeros, then per patch (row-major)
    [sin(y w), cos(y w), sin(x w), cos(x w)] over the width/4 frequencies
    w_k = temperature^(-k / (width/4))."""
    if width % 4:
        raise ValueError(f"sincos position embeddings need width % 4 == 0, got {width}")
    q = width // 4
    omega = 1.0 / temperature ** (np.arange(q) / q)
    y, x = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    ya = y.reshape(-1, 1) * omega
    xa = x.reshape(-1, 1) * omega
    pe = np.concatenate([np.sin(ya), np.cos(ya), np.sin(xa), np.cos(xa)], axis=1)
    return np.concatenate([np.zeros((1, width)), pe])[None].astype(np.float32)


def init_model(tc: TrainConfig, config: BlipConfig, key: jax.Array) -> dict:
    """`init_params`, with Dense kernels scaled by `init_scale` and embeddings at std
    1/sqrt(width) (BERT's 0.02 leaves tiny models' cross-attention uniform); with
    `pos_init="sincos"` the vision position embeddings start as `posemb_sincos_2d`."""
    if tc.pos_init not in ("normal", "sincos"):
        raise ValueError(f"pos_init must be 'normal' or 'sincos', got {tc.pos_init!r}")
    params = init_params(config, key)
    emb_std = 1.0 / math.sqrt(tc.width)
    keys = iter(jax.random.split(jax.random.fold_in(key, 1), 64))

    def fix(path: tuple, x: jax.Array) -> jax.Array:
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] == "position_embedding" and tc.pos_init == "sincos":
            gh, gw = config.vision.grid
            return jnp.asarray(posemb_sincos_2d(gh, gw, x.shape[-1]), x.dtype)
        if names[-1] == "kernel" and tc.init_scale != 1.0:
            return x * tc.init_scale
        if names[-1] == "embedding" or names[-1] in ("position_embedding", "class_embedding"):
            return emb_std * jax.random.normal(next(keys), x.shape, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(fix, params)


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup (at most a tenth of the steps), then cosine decay to 2% of `lr`."""
    warmup = min(tc.warmup, max(1, tc.steps // 10))
    return optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, max(tc.steps, warmup + 1),
                                              end_value=tc.lr * 0.02)


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    sched = lr_schedule(tc)

    def decay_mask(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda p, x: getattr(p[-1], "key", "") in ("kernel",), params)

    return optax.chain(optax.clip_by_global_norm(tc.clip),
                       optax.adamw(sched, weight_decay=tc.weight_decay, mask=decay_mask))


def _loss_fn(params: dict, config: BlipConfig, pixels: jax.Array, ids: jax.Array,
             mask: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = itm_logits(params, config, pixels, ids, mask)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = (jnp.argmax(logits, -1) == labels).mean()
    return loss, acc


@functools.partial(jax.jit, static_argnums=(1, 2))
def _train_step(params: dict, config: BlipConfig, opt: optax.GradientTransformation,
                opt_state: Any, pixels: jax.Array, ids: jax.Array, mask: jax.Array,
                labels: jax.Array) -> tuple[dict, Any, jax.Array, jax.Array]:
    (loss, acc), grads = jax.value_and_grad(_loss_fn, has_aux=True)(
        params, config, pixels, ids, mask, labels)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc


@functools.partial(jax.jit, static_argnums=1)
def _eval_logits(params: dict, config: BlipConfig, pixels: jax.Array, ids: jax.Array,
                 mask: jax.Array) -> jax.Array:
    return itm_logits(params, config, pixels, ids, mask)


def train(tc: TrainConfig, tokenizer: Any | None = None, pool: Pool | None = None,
          progress: bool = True) -> tuple[dict, BlipConfig, list[dict[str, float]]]:
    """Train from scratch; returns (params, model config, history of logged steps).

    history rows: step, loss and accuracy (means over the last `log_every` steps), lr.
    """
    from tqdm.auto import tqdm

    tokenizer = make_tokenizer() if tokenizer is None else tokenizer
    config = model_config(tc)
    if pool is None:
        t0 = time.perf_counter()
        pool = build_pool(tc, tokenizer, tc.pool_scenes, tc.seed)
        log.info("generated %d training scenes, %d texts (%d positives, %d negatives) in %.1fs",
                 len(pool), len(pool.texts), len(pool.pos), len(pool.neg),
                 time.perf_counter() - t0)
    key = jax.random.PRNGKey(tc.seed)
    params = init_model(tc, config, key)
    opt = make_optimizer(tc)
    opt_state = opt.init(params)
    rng = np.random.default_rng([tc.seed, 1])
    history: list[dict[str, float]] = []
    losses: list[jax.Array] = []
    accs: list[jax.Array] = []
    sched = lr_schedule(tc)
    bar = tqdm(range(1, tc.steps + 1), desc="train ITM", disable=not progress, unit="step")
    for step in bar:
        images, ids, mask, labels = pool.sample(rng, tc.batch_size)
        params, opt_state, loss, acc = _train_step(
            params, config, opt, opt_state, normalise_images(images, config), ids, mask, labels)
        losses.append(loss)
        accs.append(acc)
        if step % tc.log_every == 0 or step == tc.steps:
            lv = float(np.mean(jax.device_get(losses)))
            av = float(np.mean(jax.device_get(accs)))
            row = {"step": step, "loss": lv, "accuracy": av, "lr": float(sched(step))}
            history.append(row)
            losses, accs = [], []
            bar.set_postfix(loss=f"{lv:.3f}", acc=f"{av:.3f}")
            log.info("step %d: loss %.4f, ITM accuracy %.3f, lr %.2e", step, lv, av, row["lr"])
    return jax.device_get(params), config, history


def step_losses(tc: TrainConfig, tokenizer: Any, pool: Pool) -> list[float]:
    """Per-step training losses (for tests): `train` with log_every=1."""
    _, _, hist = train(dataclasses.replace(tc, log_every=1), tokenizer, pool, progress=False)
    return [h["loss"] for h in hist]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def predict_match(params: dict, config: BlipConfig, images: np.ndarray, ids: np.ndarray,
                  mask: np.ndarray, batch: int = 250) -> np.ndarray:
    """ITM decisions (1 = match) for uint8 images (N, H, W, 3) paired with texts (N, T), in
    batches of `batch`."""
    return np.concatenate([
        np.asarray(jnp.argmax(_eval_logits(params, config,
                                           normalise_images(images[b:b + batch], config),
                                           ids[b:b + batch], mask[b:b + batch]), -1))
        for b in range(0, len(ids), batch)])


def evaluate_itm(params: dict, config: BlipConfig, pool: Pool, n: int = 2000, seed: int = 0,
                 batch: int = 250) -> dict[str, float]:
    """ITM accuracy on `n` (scene, text) pairs of a held-out pool: overall, matches, mismatches."""
    rng = np.random.default_rng([seed, 2])
    correct = np.zeros(2)
    total = np.zeros(2)
    for _ in range(max(1, n // batch)):
        images, ids, mask, labels = pool.sample(rng, batch)
        pred = predict_match(params, config, images, ids, mask, batch)
        for c in (0, 1):
            sel = labels == c
            correct[c] += (pred[sel] == c).sum()
            total[c] += sel.sum()
    return {"accuracy": float(correct.sum() / total.sum()),
            "accuracy_match": float(correct[1] / max(1, total[1])),
            "accuracy_mismatch": float(correct[0] / max(1, total[0])),
            "pairs": int(total.sum())}


def itm_by_negative_kind(params: dict, config: BlipConfig, tokenizer: Any,
                         num_scenes: int = 400, seed: int = 0, max_len: int = 24,
                         batch: int = 200) -> dict[str, dict[str, dict[str, float]]]:
    """ITM accuracy per scene kind and per hard-negative type, on fresh scenes.

    For `num_scenes` scenes (kinds in turn; seeded by `seed`, independent of the training pool),
    one ref of the first target is drawn; its first sentence is a positive ("match") and, for
    each perturbation type of `shapesref.perturbations` (colour, shape, size, position,
    relation, landmark) with a certified-false variant, one such variant is a negative.
    Returns {kind: {"match" or perturbation: {"accuracy", "n"}}}: which words the model checks.
    """
    cfg = sr.ShapesRefConfig(image_size=config.vision.image_hw[0])
    rng = np.random.default_rng([seed, 4241])
    images, texts, labels, keys = [], [], [], []
    for i in range(num_scenes):
        kind = sr.KINDS[i % len(sr.KINDS)]
        scene = sr.generate_scene(rng, cfg, kind)
        ref = sr.make_ref(scene, scene.targets[0], rng)
        rows = [(ref.sentences[0], 1, "match")]
        for group in sr.perturbations(ref.expressions[0], cfg):
            false = false_variants(scene, ref.expressions[0], group)
            if false:
                v = false[int(rng.integers(len(false)))]
                rows.append((sr.phrasings(v)[0], 0, group))
        for text, label, group in rows:
            images.append(scene.image)
            texts.append(text)
            labels.append(label)
            keys.append((kind, group))
    ids, mask = tokenize_prompts(tokenizer, texts, max_len)
    pred = predict_match(params, config, np.stack(images), ids, mask, batch)
    hits: dict[tuple[str, str], list[bool]] = {}
    for key, p, y in zip(keys, pred, labels, strict=True):
        hits.setdefault(key, []).append(bool(p == y))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (kind, group), h in sorted(hits.items()):
        out.setdefault(kind, {})[group] = {"accuracy": float(np.mean(h)), "n": len(h)}
    return out


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _probe_heat(params: dict, config: BlipConfig, layer: int, use_pwe: bool,
                embeds: jax.Array, ids: jax.Array, mask: jax.Array, focus: jax.Array,
                primary: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Heat maps upsampled (bicubic) to the image size, (B, H, W), and P(match) (B,)."""
    cam = gradcam_from_embeds(params, config, embeds, ids, mask, layer=layer)
    heat = jax.vmap(lambda a, g, v, f, p: heat_map(a, g, v, f, p, use_pwe=use_pwe))(
        cam.attn, cam.grad, mask, focus, primary)
    h, w = config.vision.image_hw
    up = jax.image.resize(heat, (heat.shape[0], h, w), "bicubic")
    return up, cam.match_prob


def localisation_probe(params: dict, config: BlipConfig, tokenizer: Any, num_images: int = 200,
                       split: str = "train", layers: Sequence[int] | None = None,
                       method: IteRPrimEConfig | None = None, batch: int = 64
                       ) -> dict[str, Any]:
    """Fraction of ShapesRef `split` sentences whose (upsampled) Grad-CAM heat argmax lies in the
    referred object's mask, per text layer, for the plain ("no PWE") and the PWE heat (also per
    kind, and the fraction whose argmax lies on any object).

    Scenes are `shapesref.generate_example(ShapesRefConfig(), split, i)` for i < num_images:
    with `split="val"` the benchmark's val images; the default ("train") is the ShapesRef
    train split, used for model selection only (never evaluated on, never trained on).
    """
    from .language import encode_batch, load_spacy

    method = IteRPrimEConfig() if method is None else method
    layers = list(range(config.text.num_hidden_layers)) if layers is None else list(layers)
    cfg = sr.ShapesRefConfig(image_size=config.vision.image_hw[0])
    images, targets, objects, sentences, kinds = [], [], [], [], []
    for i in range(num_images):
        scene, refs = sr.generate_example(cfg, split, i)
        for ref in refs:
            for s in ref.sentences:
                images.append(scene.image)
                targets.append(scene.objects[ref.target].mask)
                objects.append(np.any([o.mask for o in scene.objects], axis=0))
                sentences.append(s)
                kinds.append(ref.kind)
    nlp = load_spacy(method.spacy_model)
    text = encode_batch(tokenizer, nlp, sentences, method)
    pixels = normalise_images(np.stack(images), config)
    tmasks = np.stack(targets)
    omasks = np.stack(objects)
    n = len(sentences)
    hits: dict[str, np.ndarray] = {}
    on_object: dict[str, np.ndarray] = {}
    match_prob = np.zeros(n)
    for start in range(0, n, batch):
        sl = slice(start, min(n, start + batch))
        pad = batch - (sl.stop - sl.start)

        def p(x: np.ndarray, pad: int = pad) -> np.ndarray:
            return np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x

        embeds = encode_image(params, config, jnp.asarray(p(pixels[sl])))
        args = [jnp.asarray(p(a[sl])) for a in (text.input_ids, text.attention_mask,
                                                text.focus, text.primary)]
        for layer in layers:
            for use_pwe in (False, True):
                up, prob = _probe_heat(params, config, layer, use_pwe, embeds, *args)
                up = np.asarray(up)[: sl.stop - sl.start]
                flat = up.reshape(up.shape[0], -1).argmax(-1)
                ys, xs = np.unravel_index(flat, up.shape[1:])
                hit = tmasks[sl][np.arange(len(ys)), ys, xs]
                name = f"layer{layer}_{'pwe' if use_pwe else 'plain'}"
                hits.setdefault(name, np.zeros(n, bool))[sl] = hit
                on_object.setdefault(name, np.zeros(n, bool))[sl] = omasks[sl][
                    np.arange(len(ys)), ys, xs]
                match_prob[sl] = np.asarray(prob)[: sl.stop - sl.start]
    kinds_arr = np.asarray(kinds)
    result: dict[str, Any] = {"sentences": n, "images": num_images, "split": split,
                              "mean_match_prob": float(match_prob.mean()), "hit_rate": {},
                              "hit_rate_by_kind": {}, "on_any_object_rate": {}}
    for name, h in hits.items():
        result["hit_rate"][name] = float(h.mean())
        result["on_any_object_rate"][name] = float(on_object[name].mean())
        result["hit_rate_by_kind"][name] = {k: float(h[kinds_arr == k].mean())
                                            for k in sr.KINDS if (kinds_arr == k).any()}
    best = max(result["hit_rate"], key=result["hit_rate"].get)
    result["best"] = best
    return result


def recommended_method(probe: dict[str, Any]) -> dict[str, Any]:
    """`IteRPrimEConfig` fields recommended for the trained model (`method.json`): the Grad-CAM
    layer whose PWE heat peaks inside the referred object most often in the probe."""
    pwe = {k: v for k, v in probe["hit_rate"].items() if k.endswith("_pwe")}
    best = max(pwe, key=pwe.get)
    return {"layer": int(best.removeprefix("layer").split("_")[0])}


# --------------------------------------------------------------------------------------------
# Saving and CLI
# --------------------------------------------------------------------------------------------


def save_model(out_dir: str | Path, params: dict, config: BlipConfig,
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


def diagnose(params: dict, config: BlipConfig, tokenizer: Any, tc: TrainConfig,
             probe_images: int = 200, probe_split: str = "train") -> dict[str, Any]:
    """What a trained model offers IteRPrimE: held-out ITM accuracy (`evaluate_itm` on 1000
    fresh scenes), per hard-negative type (`itm_by_negative_kind`) and the localisation probe
    (`localisation_probe`; None when `probe_images` is 0)."""
    held = build_pool(dataclasses.replace(tc, refs_per_scene=1), tokenizer, 1000,
                      seed=tc.seed + 10_000, workers=1)
    probe = (localisation_probe(params, config, tokenizer, probe_images, probe_split)
             if probe_images > 0 else None)
    return {"heldout_itm": evaluate_itm(params, config, held),
            "heldout_itm_by_negative": itm_by_negative_kind(params, config, tokenizer,
                                                            seed=tc.seed),
            "localisation_probe": probe}


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (weights/shapesref-itm)")
    ap.add_argument("--vocab", default=str(DEFAULT_VOCAB), help="WordPiece vocab.txt")
    ap.add_argument("--probe-images", type=int, default=200,
                    help="ShapesRef images for the localisation probe (0 = skip)")
    ap.add_argument("--probe-split", default="train",
                    help="ShapesRef split of the probe (it picks method.json's layer)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        ap.add_argument(flag, type=type(getattr(d, f.name)), default=getattr(d, f.name),
                        help=f"(default {getattr(d, f.name)})")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    t0 = time.perf_counter()
    tokenizer = make_tokenizer(args.vocab)
    params, config, history = train(tc, tokenizer, progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    out = save_model(args.out, params, config, args.vocab)
    diag = diagnose(params, config, tokenizer, tc, args.probe_images, args.probe_split)
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
    record = {
        "command": "python -m iterprime_jax.train_itm " + " ".join(argv),
        "wall_time_s": time.perf_counter() - t0,
        "train_time_s": train_s,
        "recipe": tc.to_dict(),
        "model_config": config.to_dict(),
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "history": history,
        "heldout_itm": itm,
        "heldout_itm_by_negative": by_kind,
        "localisation_probe": probe,
    }
    (out / LOG_NAME).write_text(json.dumps(record, indent=1))
    if probe is not None:
        method = recommended_method(probe)
        (out / METHOD_NAME).write_text(json.dumps(method, indent=2) + "\n")
        log.info("wrote %s: %s", out / METHOD_NAME, method)
    log.info("wrote %s in %.0fs", out, record["wall_time_s"])
    return record


if __name__ == "__main__":
    main()
