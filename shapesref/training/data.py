"""Training data of the ITM model: a pool of ShapesRef scenes with matching and certified-false
texts (generated up front in worker processes, `build_pool`), batches sampled from it
(`Pool.sample`), prompt tokenisation and image normalisation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

import numpy as np

import shapesref as sr
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.models.blip.config import BlipConfig

from ..render import choice
from .config import TrainConfig


def false_variants(scene: sr.Scene, expr: sr.Expression, kind: str) -> list[sr.Expression]:
    """The one-word variants of `expr` of perturbation `kind` (`shapesref.perturbations`) that
    are clearly false in `scene`."""
    return [x for x in sr.perturbations(expr, scene.config)[kind] if expression_false(scene, x)]


def swaps(scene: sr.Scene, exprs: Sequence[sr.Expression], kind: str, n: int,
          rng: np.random.Generator) -> list[str]:
    """Up to `n` phrasings of one-word variants of `exprs` of perturbation `kind` ("shape",
    "size", "relation", ...), each clearly false in `scene`."""
    out = [x for e in exprs for x in false_variants(scene, e, kind)]
    return [_phrase(out[i], rng) for i in rng.permutation(len(out))[:n]]


def _phrase(expr: sr.Expression, rng: np.random.Generator) -> str:
    """One of the expression's phrasings, at random."""
    return choice(rng, sr.phrasings(expr))


def relation_pairs(scene: sr.Scene, n_pos: int, n_neg: int, rng: np.random.Generator
                   ) -> tuple[list[str], list[str]]:
    """Relation statements about any two objects of `scene`, true ones and certified-false ones.

    For ordered pairs (a, b) with a strictly `relation` b (`shapesref.relation_holds`), a random
    shape-naming description of each gives "desc(a) relation desc(b)"; it is a positive when
    `expression_truth` calls it true. Its negatives, each certified false: the other relations
    (opposite and perpendicular) and the roles swapped ("desc(b) relation desc(a)"). Unlike the
    referring expressions, these exist in every scene, also with a single fitting object, so
    the score gets to read the relation word (the referring expressions' relation swaps are
    rarely certifiable: some same-description object usually fits loosely). Returns up to
    `n_pos` positive and `n_neg` negative phrasings.
    """
    from ..config import RELATIONS
    from ..truth import _descs, relation_holds

    cfg = scene.config
    margin = cfg.position_margin * cfg.image_size
    objs = scene.objects
    facts = [(a, b, r) for a in range(len(objs)) for b in range(len(objs)) if a != b
             for r in RELATIONS if relation_holds(objs[a], objs[b], r, margin)]
    pos: list[sr.Expression] = []
    neg: list[sr.Expression] = []
    for i in rng.permutation(len(facts)):
        if len(pos) >= n_pos:
            break
        a, b, r = facts[i]
        da, db = _descs(objs[a]), _descs(objs[b])
        ea = da[int(rng.integers(len(da)))]
        eb = db[int(rng.integers(len(db)))]
        expr = sr.Expression(ea, relation=r, landmark=eb)
        if sr.expression_truth(scene, expr) is not True:
            continue
        pos.append(expr)
        cands = [sr.Expression(ea, relation=q, landmark=eb) for q in RELATIONS if q != r]
        cands.append(sr.Expression(eb, relation=r, landmark=ea))
        neg += [e for e in cands if sr.expression_truth(scene, e) is False]
    neg = [neg[i] for i in rng.permutation(len(neg))[:n_neg]]
    return [_phrase(e, rng) for e in pos], [_phrase(e, rng) for e in neg]


def position_statements(scene: sr.Scene, n_pos: int, n_neg: int, rng: np.random.Generator
                        ) -> tuple[list[str], list[str]]:
    """Absolute position statements about the objects a description singles out ("the red
    circle on the left" where it is the only red circle): true ones and certified-false ones
    (`expression_truth`: the one fitting object lies clearly in another part of the image).
    They teach the position words where they can be checked, as the referring expressions'
    position words (the most extreme of several fitting objects) cannot be certified false.
    Returns up to `n_pos` positive and `n_neg` negative phrasings."""
    from ..config import POSITIONS
    from ..truth import _descs, _matching

    pos: list[sr.Expression] = []
    neg: list[sr.Expression] = []
    for i, obj in enumerate(scene.objects):
        for d in [*_descs(obj), sr.Desc(None, obj.colour)]:
            if _matching(scene, d) != [i]:
                continue
            for p in POSITIONS:
                e = sr.Expression(d, position=p)
                truth = sr.expression_truth(scene, e)
                if truth is True:
                    pos.append(e)
                elif truth is False:
                    neg.append(e)
    pos = [pos[i] for i in rng.permutation(len(pos))[:n_pos]]
    neg = [neg[i] for i in rng.permutation(len(neg))[:n_neg]]
    return [_phrase(e, rng) for e in pos], [_phrase(e, rng) for e in neg]


def _gen_chunk(args: tuple[TrainConfig, int, int, int]
               ) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
    """(recipe, seed, start, n) -> scenes `start..start+n` of the pool: images, positive texts
    and negative texts."""
    recipe, seed, start, n = args
    image_size, other_frac = recipe.image_size, recipe.other_neg_frac
    scene_config = sr.ShapesRefConfig(image_size=image_size)
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    pos_all: list[list[str]] = []
    neg_all: list[list[str]] = []
    recent: list[tuple[sr.Expression, str]] = []  # expressions of earlier scenes of the chunk
    for i in range(n):
        rng = np.random.default_rng([seed, 7919, start + i])
        kind = ("attribute" if rng.random() < recipe.attribute_frac
                else sr.KINDS[1 + int(rng.integers(2))])
        scene = sr.generate_scene(rng, scene_config, kind)
        images[i] = scene.image
        targets = [scene.targets[j] for j in rng.permutation(len(scene.targets))]
        pos: list[str] = []
        neg: list[str] = []
        for t in targets[:recipe.refs_per_scene]:
            ref = sr.make_ref(scene, t, rng)
            p, q = sr.matching_pairs(ref, rng, max_negatives=recipe.max_negatives)
            pos += p
            neg += q
            for swap_kind, k in (("size", recipe.size_negatives),
                                 ("relation", recipe.relation_negatives)):
                if k:
                    neg += swaps(scene, ref.expressions, swap_kind, k, rng)
            recent += list(zip(ref.expressions, ref.sentences, strict=True))
        if recipe.relation_pairs:
            p, q = relation_pairs(scene, recipe.relation_pairs, 2 * recipe.relation_pairs, rng)
            pos += p
            neg += q
        if recipe.position_statements:
            per_scene = recipe.position_statements
            p, q = position_statements(scene, per_scene, per_scene, rng)
            pos += p
            neg += q
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


class PoolLike(Protocol):
    """What training draws batches from: a `Pool` or a `stream.StreamPool`."""

    def sample(self, rng: np.random.Generator, batch: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...


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


def build_pool(recipe: TrainConfig, tokenizer: Any, n_scenes: int, seed: int,
               workers: int | None = None, chunk: int = 500) -> Pool:
    """Generate `n_scenes` scenes (seeded by `seed`, independent of `workers`) and tokenise."""
    workers = recipe.workers if workers is None else workers
    jobs = [(recipe, seed, s, min(chunk, n_scenes - s))
            for s in range(0, n_scenes, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_gen_chunk, jobs))
    else:
        parts = [_gen_chunk(j) for j in jobs]
    images = np.concatenate([p[0] for p in parts])
    pos_lists = [x for p in parts for x in p[1]]
    neg_lists = [x for p in parts for x in p[2]]
    return _make_pool(images, pos_lists, neg_lists, tokenizer, recipe.max_text_length)


def caption_pool(recipe: TrainConfig, tokenizer: Any, n_scenes: int, seed: int) -> Pool:
    """Object captions for the curriculum's first stage: per scene (kinds at random), the
    positives are every description of a present object that names its shape ("circle",
    "red circle", "small circle", "small red circle"), the negatives every shape / colour /
    size combination no object has; half of them get a leading "the"."""
    from ..grammar import _noun_phrase
    from ..truth import _descs, _matching

    cfg = sr.ShapesRefConfig(image_size=recipe.image_size)
    rng = np.random.default_rng([seed, 55])
    images, pos_lists, neg_lists = [], [], []
    for _ in range(n_scenes):
        scene = sr.generate_scene(rng, cfg, sr.KINDS[int(rng.integers(len(sr.KINDS)))])
        images.append(scene.image)
        pos = {_noun_phrase(d) for o in scene.objects for d in _descs(o)}
        neg = {_noun_phrase(d) for s in cfg.shapes for c in (None, *cfg.colours)
               for z in (None, *sr.SIZES)
               if not _matching(scene, d := sr.Desc(s, c, z))}
        pos_lists.append([("the " if rng.random() < 0.5 else "") + x for x in sorted(pos)])
        neg_lists.append([("the " if rng.random() < 0.5 else "") + x for x in sorted(neg)])
    return _make_pool(np.stack(images), pos_lists, neg_lists, tokenizer, recipe.max_text_length)


def _make_pool(images: np.ndarray, pos_lists: list[list[str]], neg_lists: list[list[str]],
               tokenizer: Any, max_len: int) -> Pool:
    """Tokenise the unique texts and flatten the per-scene lists into a `Pool`."""
    index: dict[str, int] = {}
    for lst in pos_lists + neg_lists:
        for s in lst:
            index.setdefault(s, len(index))
    texts = list(index)
    ids, mask = tokenize_prompts(tokenizer, texts, max_len)

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
