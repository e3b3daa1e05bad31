"""`segment()`: IteRPrimE end to end, and its batched forms.

Data flow (ARCHITECTURE.md): image -> pixels -> image embeds (once per image) ; expression ->
token ids + PWE masks (spaCy, outside jit) ; (embeds, tokens, masks) -> IGRS (jit) -> heat grid
-> bicubic upsample onto a fixed canvas -> proposal selection (jit) -> mask.

Static shapes under jit: text length = the batch's longest prompt rounded up to a multiple of
`TEXT_MULTIPLE` (at most `IteRPrimEConfig.max_text_length`, `text_length_bucket`), sentences
padded to a power-of-two bucket, proposals padded to a power-of-two bucket, images placed on a
square canvas whose side is a multiple of `CANVAS_MULTIPLE`; the real image size is a traced
value. The float settings of the method (`FloatSettings`: alpha, stretch, thresholds) are traced
too, so a sweep over them compiles once; the structural settings are static.

Transfers are explicit: the model's parameters already live on the device (`iterprime_jax.load`
places them), the public functions `jax.device_put` their inputs once per call and
`jax.device_get` the outputs, so warm calls run under `jax.transfer_guard("disallow")`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..buckets import bucket, round_up
from ..config import IteRPrimEConfig
from ..models.blip.config import BlipConfig
from ..models.blip.modeling import encode_image
from ..models.blip.preprocess import as_rgb_uint8, preprocess_image
from ..models.loading import Model, matmul_precision
from ..placement import put_inputs
from ..types import Array, Params
from .gradcam import gradcam_from_embeds
from .heat import heat_map, resize_heatmap
from .language import TextBatch, encode_batch, load_parser
from .refine import FloatSettings, IGRSResult, igrs, static_config, stretch
from .select import check_proposals, count_components, select_proposal
from .settings import method_config

CANVAS_MULTIPLE = 64
TEXT_MULTIPLE = 8  # text lengths are bucketed to multiples of this (see text_length_bucket)


__all__ = ["CANVAS_MULTIPLE", "TEXT_MULTIPLE", "CoreInputs", "CoreOutput", "FloatSettings",
           "PreparedImage", "ProposalArrays", "SegmentResult", "TextArrays", "bucket",
           "canvas_side", "default_config", "encode_texts", "pad_text", "prepare_image",
           "segment", "segment_batch", "segment_core", "segment_images", "text_length_bucket",
           "upsample_heat"]


def canvas_side(hw: tuple[int, int], multiple: int = CANVAS_MULTIPLE) -> int:
    """Square canvas side for an image of size hw: max side rounded up to `multiple`."""
    return round_up(max(hw), multiple)


# --------------------------------------------------------------------------- jitted inputs
class TextArrays(NamedTuple):
    """The arrays of B prompts, each (B, T) (a leading image axis in front under `jax.vmap`):
    WordPiece ids (int32), attention mask, focus (PWE) mask and primary-word mask."""

    input_ids: Array
    attention_mask: Array
    focus: Array
    primary: Array


class ProposalArrays(NamedTuple):
    """One image's N proposals on its canvas (N may be 0: the threshold baseline): masks
    (N, canvas, canvas) bool, valid (N,) bool (False: padding), num_components (N,) int32."""

    masks: Array
    valid: Array
    num_components: Array


class CoreInputs(NamedTuple):
    """The arrays of `segment_core` for one image and its B sentences: image_embeds (1, S, D),
    text (`TextArrays`, (B, T)), image_hw (2,) int32 (the real size on the canvas) and
    proposals (`ProposalArrays`). `segment_images_core` takes them with a leading image axis
    on every leaf."""

    image_embeds: Array
    text: TextArrays
    image_hw: Array
    proposals: ProposalArrays


# --------------------------------------------------------------------------- jitted core
def text_heatmaps(params: Params, model_config: BlipConfig, method: IteRPrimEConfig,
                  image_embeds: Array, text: TextArrays, floats: FloatSettings | None = None
                  ) -> IGRSResult:
    """IGRS over B sentences of one image. image_embeds: (1, S, D); text: (B, T) arrays;
    floats: the float settings (default: `method`'s)."""
    b = text.input_ids.shape[0]
    per_sample_heat = jax.vmap(functools.partial(heat_map, use_pwe=method.use_pwe,
                                                 no_primary=method.no_primary_tokens,
                                                 authors_code=method.authors_code))

    def step(keep: Array) -> tuple[Array, Array]:
        cam = gradcam_from_embeds(params, model_config, image_embeds, text.input_ids,
                                  text.attention_mask, method.layer, keep)
        return per_sample_heat(cam.attn, cam.grad, text.attention_mask, text.focus,
                               text.primary), cam.match_prob

    return igrs(step, b, model_config.vision.grid, method, floats)


def upsample_heat(heat: Array, image_hw: Array, canvas: int, method: IteRPrimEConfig,
                  first_pass: Array | bool = False, floats: FloatSettings | None = None
                  ) -> tuple[Array, Array]:
    """(gh, gw) map -> (canvas, canvas) map over the top-left image_hw region (traced), zero
    outside: `resize_heatmap` (PyTorch bicubic), min-max normalised on the region, and, where
    `first_pass` (the map is pass 0's own, docs/method.md section 3), stretched (`stretch`:
    its maximum over the canvas is the one over the region, as the map is 0 outside and its
    minimum 0 inside). Returns (heat, region mask)."""
    floats = FloatSettings.of(method) if floats is None else floats
    up = resize_heatmap(heat, image_hw, canvas)
    rows = jnp.arange(canvas)[:, None] < image_hw[0]
    cols = jnp.arange(canvas)[None, :] < image_hw[1]
    region = rows & cols
    lo = jnp.min(jnp.where(region, up, jnp.inf))
    hi = jnp.max(jnp.where(region, up, -jnp.inf))
    rng = hi - lo
    up = jnp.where(region & (rng > 0), (up - lo) / jnp.where(rng > 0, rng, 1.0), 0.0)
    s = stretch(up, floats.stretch_sharpness, floats.stretch_center)
    up = jnp.where(region & first_pass, s, up)
    return up, region


class CoreOutput(NamedTuple):
    """Per sentence (leading B): heat (canvas, canvas), mask (canvas, canvas) bool, index
    (chosen proposal, -1 none), has_candidate, and the IGRS result on the patch grid."""

    heat: Array
    mask: Array
    index: Array
    has_candidate: Array
    igrs: IGRSResult


def segment_core(params: Params, model_config: BlipConfig, method: IteRPrimEConfig,
                 canvas: int, inputs: CoreInputs, floats: FloatSettings | None = None
                 ) -> CoreOutput:
    """One image, B sentences: IGRS heat maps, upsampling and proposal selection.

    inputs: `CoreInputs` (image_embeds (1, S, D), text (B, T), image_hw (2,), proposals
    (N, canvas, canvas), N possibly 0: threshold baseline); floats: the float settings as
    scalars (default: `method`'s own values, compiled in; jitted callers pass them traced
    with `static_config(method)`).
    """
    floats = FloatSettings.of(method) if floats is None else floats
    res = text_heatmaps(params, model_config, method, inputs.image_embeds, inputs.text, floats)
    props = inputs.proposals

    def localize(h: Array, first: Array) -> tuple[Array, Array, Array, Array]:
        up, region = upsample_heat(h, inputs.image_hw, canvas, method, first, floats)
        thresh = (up >= floats.heat_threshold) & region
        if props.masks.shape[0] == 0:
            return up, thresh, jnp.int32(-1), jnp.asarray(False)
        sel = select_proposal(up, props.masks, props.valid, props.num_components,
                              method.max_components)
        mask = sel.mask
        if not method.empty_if_no_candidate:
            mask = jnp.where(sel.has_candidate, mask, thresh)
        return up, mask, sel.index, sel.has_candidate

    up, mask, index, has = jax.vmap(localize)(res.heat, res.first_pass)
    return CoreOutput(heat=up, mask=mask, index=index, has_candidate=has, igrs=res)


segment_core_jit = jax.jit(segment_core, static_argnums=(1, 2, 3))
encode_image_jit = jax.jit(encode_image, static_argnums=1)


def _images_core(params: Params, model_config: BlipConfig, method: IteRPrimEConfig,
                 canvas: int, inputs: CoreInputs, floats: FloatSettings | None = None
                 ) -> CoreOutput:
    """`segment_core` vmapped over images: every leaf of `inputs` has a leading image axis
    (each image with its own padded sentences and proposals on a shared canvas); `floats`
    shared."""
    return jax.vmap(lambda x: segment_core(params, model_config, method, canvas, x, floats)
                    )(inputs)


segment_images_core = jax.jit(_images_core, static_argnums=(1, 2, 3))


def jit_method(method: IteRPrimEConfig) -> tuple[IteRPrimEConfig, FloatSettings]:
    """(static part of `method`, its float settings as float32 host scalars): the arguments
    of the jitted cores, so that configs differing only in float settings share a
    compilation."""
    return static_config(method), FloatSettings.of(method).traced()


# --------------------------------------------------------------------------- host side
@dataclasses.dataclass(frozen=True)
class SegmentResult:
    """mask (H, W) bool; heatmap (H, W) float32 in [0,1]; iterations (accepted IGRS passes);
    primary_word; proposal_index (-1: none chosen / no proposals); scores: P(match) per pass;
    heatmaps_per_iteration (n, gh, gw) patch-grid maps; truncated: expression was cut."""

    mask: np.ndarray
    heatmap: np.ndarray
    iterations: int
    primary_word: str | None
    proposal_index: int
    has_candidate: bool
    scores: np.ndarray
    heatmaps_per_iteration: np.ndarray
    expression: str
    truncated: bool


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """Host-side inputs of one image on its canvas."""

    hw: tuple[int, int]
    canvas: int
    pixels: np.ndarray                 # (S, S, 3) float32
    proposals: np.ndarray              # (Nb, canvas, canvas) bool
    proposal_valid: np.ndarray         # (Nb,) bool
    num_components: np.ndarray         # (Nb,) int32
    num_proposals: int

    @property
    def proposal_arrays(self) -> ProposalArrays:
        """The padded proposals as the jitted core takes them."""
        return ProposalArrays(self.proposals, self.proposal_valid, self.num_components)


def prepare_image(image: Any, model_config: BlipConfig, proposals: Any | None = None,
                  canvas: int | None = None, min_proposal_bucket: int = 4) -> PreparedImage:
    """Validate and pad one image's inputs. proposals: (N, H, W) bool/uint8 or None."""
    rgb = as_rgb_uint8(image)
    hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    side = canvas or canvas_side(hw)
    if side < max(hw):
        raise ValueError(f"canvas {side} is smaller than the image {hw}")
    if proposals is None:
        props = np.zeros((0, side, side), bool)
        valid = np.zeros((0,), bool)
        components = np.zeros((0,), np.int32)
        n = 0
    else:
        p = check_proposals(proposals, hw)
        n = p.shape[0]
        n_padded = bucket(n, min_proposal_bucket)
        props = np.zeros((n_padded, side, side), bool)
        props[:n, : hw[0], : hw[1]] = p
        valid = np.arange(n_padded) < n
        components = np.zeros((n_padded,), np.int32)
        components[:n] = count_components(p) if n else components[:0]
    return PreparedImage(hw=hw, canvas=side, pixels=preprocess_image(rgb, model_config),
                         proposals=props, proposal_valid=valid, num_components=components,
                         num_proposals=n)


def text_length_bucket(attention_mask: Any, max_length: int,
                       multiple: int = TEXT_MULTIPLE) -> int:
    """Static text length for a batch of prompts: the longest one (attention mask (B, T))
    rounded up to `multiple` and capped at `max_length`. Trailing padding beyond it is dropped:
    padded tokens are masked everywhere, so results do not change, and the text encoder (the
    bulk of the work) runs on fewer positions; one compilation per bucket."""
    mask = np.asarray(attention_mask)
    longest = int(mask.sum(-1).max()) if mask.size else 1
    return int(min(max_length, max(multiple, -(-longest // multiple) * multiple)))


def pad_text(batch: TextBatch, size: int, length: int | None = None) -> TextArrays:
    """(B, T) text arrays padded to `size` rows (dummy rows repeat row 0; results dropped) and,
    with `length`, cut to the first `length` token positions (only padding may be cut)."""
    arrays = TextArrays(batch.input_ids, batch.attention_mask, batch.focus, batch.primary)
    b = arrays.input_ids.shape[0]
    if size < b:
        raise ValueError(f"cannot pad {b} sentences to {size}")
    if length is not None:
        if np.asarray(batch.attention_mask)[:, length:].any():
            raise ValueError(f"cannot cut prompts to {length} tokens: some are longer")
        arrays = TextArrays(*(np.asarray(a)[:, :length] for a in arrays))
    idx = np.concatenate([np.arange(b), np.zeros(size - b, int)])
    return TextArrays(*(a[idx] for a in arrays))


def _results(out: CoreOutput, batch: TextBatch, hw: tuple[int, int]) -> list[SegmentResult]:
    out = jax.device_get(out)
    h, w = hw
    results = []
    for i, item in enumerate(batch.items):
        results.append(SegmentResult(
            mask=np.asarray(out.mask[i, :h, :w]), heatmap=np.asarray(out.heat[i, :h, :w]),
            iterations=int(out.igrs.iterations[i]), primary_word=item.primary_word,
            proposal_index=int(out.index[i]), has_candidate=bool(out.has_candidate[i]),
            scores=np.asarray(out.igrs.scores[i]),
            heatmaps_per_iteration=np.asarray(out.igrs.heats[i]),
            expression=item.expression, truncated=item.truncated))
    return results


def encode_texts(model: Model, expressions: Sequence[str], config: IteRPrimEConfig) -> TextBatch:
    """Parser (`config.parser`) + WordPiece with the prompt template -> fixed-length (B, T)
    arrays."""
    if isinstance(expressions, str):
        expressions = [expressions]
    if len(expressions) == 0:
        raise ValueError("no expressions given")
    if config.max_text_length > model.config.text.max_position_embeddings:
        raise ValueError(f"max_text_length {config.max_text_length} exceeds the model's "
                         f"{model.config.text.max_position_embeddings} positions")
    return encode_batch(model.tokenizer, load_parser(config), expressions, config)


def default_config(model: Model, config: IteRPrimEConfig | None) -> IteRPrimEConfig:
    """`config`, or when None the model's own method (`method_config`: its directory's
    method.json over the paper's defaults; the defaults for a model without a directory)."""
    if config is not None:
        return config
    path = getattr(model, "path", None)
    return IteRPrimEConfig() if path is None else method_config(path)


def segment_batch(model: Model, image: Any, expressions: Sequence[str], proposals: Any = None,
                  config: IteRPrimEConfig | None = None) -> list[SegmentResult]:
    """All expressions of one image in one jitted call (image encoded once). The inputs go to
    the parameters' devices in one explicit `jax.device_put`; the outputs come back with
    `jax.device_get`. Zero proposals (an (0, H, W) array) are a ValueError: pass None for the
    threshold baseline. `config` None: the model's own method (`default_config`)."""
    config = default_config(model, config)
    batch = encode_texts(model, expressions, config)
    prep = prepare_image(image, model.config, proposals)
    if proposals is not None and prep.num_proposals == 0:
        raise ValueError(f"proposals hold no masks (shape {np.shape(proposals)}); pass "
                         "proposals=None for the threshold baseline (the thresholded heat map)")
    text = pad_text(batch, bucket(len(batch.items)),
                    text_length_bucket(batch.attention_mask, batch.input_ids.shape[1]))
    method, floats = jit_method(config)
    pixels, inputs, floats = put_inputs(
        model.params, prep.pixels[None],
        CoreInputs(None, text, np.asarray(prep.hw, np.int32), prep.proposal_arrays), floats)
    with matmul_precision(model):
        embeds = encode_image_jit(model.params, model.config, pixels)
        out = segment_core_jit(model.params, model.config, method, prep.canvas,
                               inputs._replace(image_embeds=embeds), floats)
    return _results(out, batch, prep.hw)


def segment(model: Model, image_uint8: Any, expression: str, proposals: Any = None,
            config: IteRPrimEConfig | None = None) -> SegmentResult:
    """Segment the object `expression` refers to in `image_uint8` (an image as
    `iterprime_jax.image_input.to_rgb_uint8` accepts it: (H, W, 3) / grey / RGBA uint8 or
    uint16 arrays, PIL images; a path is a TypeError).

    proposals: (N, H, W) class-agnostic masks, bool or integer 0/1 or 0/255 (soft masks are a
    ValueError: threshold them), N >= 1; or None for the threshold baseline.
    config: the method; None: the model's own (`ij.method_config(model)`, `default_config`).
    """
    return segment_batch(model, image_uint8, [expression], proposals, config)[0]


def _stack_texts(batches: Sequence[TextBatch]) -> TextArrays:
    """Per-image text batches -> (I, Sb, T) arrays: sentences padded to the bucket of the
    largest image, text length to the longest prompt's bucket."""
    n_sentences = bucket(max(len(b.items) for b in batches))
    text_length = max(text_length_bucket(b.attention_mask, b.input_ids.shape[1])
                      for b in batches)
    texts = [pad_text(b, n_sentences, text_length) for b in batches]
    return TextArrays(*(np.stack(a) for a in zip(*texts, strict=True)))


def _stack_proposals(preps: Sequence[PreparedImage]) -> ProposalArrays:
    """Per-image padded proposals -> (I, N, canvas, canvas) arrays, N the largest bucket
    (rows beyond an image's own are invalid padding)."""
    n = max(p.proposals.shape[0] for p in preps)
    side = preps[0].canvas
    props = np.zeros((len(preps), n, side, side), bool)
    valid = np.zeros((len(preps), n), bool)
    components = np.zeros((len(preps), n), np.int32)
    for i, p in enumerate(preps):
        k = p.proposals.shape[0]
        props[i, :k], valid[i, :k], components[i, :k] = p.proposal_arrays
    return ProposalArrays(props, valid, components)


def segment_images(model: Model, images: Sequence[Any], expressions: Sequence[Sequence[str]],
                   proposals: Sequence[Any] | None = None,
                   config: IteRPrimEConfig | None = None) -> list[list[SegmentResult]]:
    """Several images at once (vmap over images): per image, all its expressions. `config`
    None: the model's own method (`default_config`).

    An image whose proposals hold no masks gets no candidate, as in the evaluator (the mask
    is empty by the authors' rule, `IteRPrimEConfig.empty_if_no_candidate`; proposal_index
    -1, has_candidate False); `segment` / `segment_batch` refuse zero proposals instead."""
    if len(images) == 0:
        raise ValueError("segment_images: no images given")
    config = default_config(model, config)
    if len(images) != len(expressions):
        raise ValueError(f"{len(images)} images but {len(expressions)} expression lists")
    if proposals is not None and len(proposals) != len(images):
        raise ValueError(f"{len(images)} images but {len(proposals)} proposal arrays")
    batches = [encode_texts(model, e, config) for e in expressions]
    hws = [as_rgb_uint8(im, f"images[{i}]").shape[:2] for i, im in enumerate(images)]
    side = max(canvas_side(hw) for hw in hws)
    preps = [prepare_image(im, model.config, None if proposals is None else proposals[i], side)
             for i, im in enumerate(images)]
    text = _stack_texts(batches)
    props = _stack_proposals(preps)
    hw = np.asarray([p.hw for p in preps], np.int32)
    method, floats = jit_method(config)
    pixels, inputs, floats = put_inputs(
        model.params, np.stack([p.pixels for p in preps]), CoreInputs(None, text, hw, props),
        floats)
    with matmul_precision(model):
        embeds = encode_image_jit(model.params, model.config, pixels)[:, None]
        out = segment_images_core(model.params, model.config, method, side,
                                  inputs._replace(image_embeds=embeds), floats)
    out = jax.device_get(out)
    results = []
    for i, (b, p) in enumerate(zip(batches, preps, strict=True)):
        per = jax.tree_util.tree_map(lambda x, i=i: x[i], out)
        results.append(_results(per, b, p.hw))
    return results
