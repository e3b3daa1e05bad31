"""Diagnostics of a trained ITM model: held-out ITM accuracy (`evaluate_itm`), accuracy per
hard-negative type (`itm_by_negative_kind`) and the Grad-CAM localisation probe
(`localisation_probe`) that picks the Grad-CAM layer recorded in `method.json`; `diagnose`
runs them all (the training CLI and `shapesref/scripts/recipe_probe.py`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import shapesref as sr
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method.gradcam import gradcam_from_embeds
from iterprime_jax.method.heat import heat_map, resize_heatmap
from iterprime_jax.method.language import encode_batch, load_spacy
from iterprime_jax.models.blip.config import BlipConfig
from iterprime_jax.models.blip.modeling import encode_image, itm_logits
from iterprime_jax.types import Params

from .config import TrainConfig
from .data import Pool, build_pool, false_variants, normalise_images, tokenize_prompts


@functools.partial(jax.jit, static_argnums=1)
def _eval_logits(params: Params, config: BlipConfig, pixels: jax.Array, ids: jax.Array,
                 mask: jax.Array) -> jax.Array:
    return itm_logits(params, config, pixels, ids, mask)


def predict_match(params: Params, config: BlipConfig, images: np.ndarray, ids: np.ndarray,
                  mask: np.ndarray, batch: int = 250) -> np.ndarray:
    """ITM decisions (1 = match) for uint8 images (N, H, W, 3) paired with texts (N, T), in
    batches of `batch`."""
    return np.concatenate([
        np.asarray(jnp.argmax(_eval_logits(params, config,
                                           normalise_images(images[b:b + batch], config),
                                           ids[b:b + batch], mask[b:b + batch]), -1))
        for b in range(0, len(ids), batch)])


def evaluate_itm(params: Params, config: BlipConfig, pool: Pool, n: int = 2000, seed: int = 0,
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


def itm_by_negative_kind(params: Params, config: BlipConfig, tokenizer: Any,
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
def _probe_heat(params: Params, config: BlipConfig, layer: int, use_pwe: bool,
                embeds: jax.Array, ids: jax.Array, mask: jax.Array, focus: jax.Array,
                primary: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Heat maps upsampled to the image size (`resize_heatmap`), (B, H, W), and P(match)
    (B,)."""
    cam = gradcam_from_embeds(params, config, embeds, ids, mask, layer=layer)
    heat = jax.vmap(lambda a, g, v, f, p: heat_map(a, g, v, f, p, use_pwe=use_pwe))(
        cam.attn, cam.grad, mask, focus, primary)
    h, w = config.vision.image_hw
    up = jax.vmap(resize_heatmap, in_axes=(0, None, None))(
        heat, jnp.asarray([h, w], jnp.int32), max(h, w))[:, :h, :w]
    return up, cam.match_prob


def localisation_probe(params: Params, config: BlipConfig, tokenizer: Any, num_images: int = 200,
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


def diagnose(params: Params, config: BlipConfig, tokenizer: Any, recipe: TrainConfig,
             probe_images: int = 200, probe_split: str = "train") -> dict[str, Any]:
    """What a trained model offers IteRPrimE: held-out ITM accuracy (`evaluate_itm` on 1000
    fresh scenes), per hard-negative type (`itm_by_negative_kind`) and the localisation probe
    (`localisation_probe`; None when `probe_images` is 0)."""
    held = build_pool(dataclasses.replace(recipe, refs_per_scene=1), tokenizer, 1000,
                      seed=recipe.seed + 10_000, workers=1)
    probe = (localisation_probe(params, config, tokenizer, probe_images, probe_split)
             if probe_images > 0 else None)
    return {"heldout_itm": evaluate_itm(params, config, held),
            "heldout_itm_by_negative": itm_by_negative_kind(params, config, tokenizer,
                                                            seed=recipe.seed),
            "localisation_probe": probe}
