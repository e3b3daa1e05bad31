"""Class-agnostic mask proposals from Mask2Former, by the authors' rule (docs/method.md section 4).

    image (H, W, 3) uint8 --preprocess (host: resize 800/1333, normalise, zero pad)-->
    pixels (B, Hb, Wb, 3) --mask2former_forward (jit)--> mask logits (B, Q, Hb/4, Wb/4)
    --postprocess_masks (jit: upsample, crop, resize to H x W, sigmoid > 0.35)--> (Q, H, W) bool

`propose(model, image)` is the one-image form; `Proposer` is the batched form the evaluator
uses: images are grouped by their network input size (a bucket, by default exactly
detectron2's padded size), each group runs as one jitted call with the image axis sharded over
the devices, and the real sizes are traced values, so a split compiles once per (bucket,
batch size, output canvas) -- a handful of times, not once per image. All Q queries are
returned, in query order; the class logits are not used.

A call too large for the device memory is a `memory.DeviceMemoryError` naming ``max_batch``:
checked once per compiled shape before running where the backend reports its memory, and
XLA's out-of-memory error re-raised so (chained) otherwise.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from ...buckets import bucket, round_up
from ...memory import DeviceMemoryError, MemoryCheck
from ...placement import data_mesh, data_shardings
from ...types import Array, Params
from ..loaded import ProposerModel, matmul_precision
from .config import Mask2FormerConfig
from .modeling import mask2former_forward
from .postprocess import postprocess_masks
from .preprocess import ProposeConfig, bucket_shape, check_image, check_threshold, preprocess

DEFAULT_MAX_BATCH = 8


def check_proposer(model: Any, name: str = "proposer") -> None:
    """ValueError unless `model` is a `ProposerModel` (`iterprime_jax.load` of a converted
    ``mask2former`` checkpoint), naming what it is instead."""
    if isinstance(model, ProposerModel):
        return
    cfg = getattr(model, "config", None)
    what = type(cfg).__name__ if cfg is not None else type(model).__name__
    path = getattr(model, "path", None)
    src = f" loaded from {path}" if path is not None else ""
    raise ValueError(f"{name} must be a Mask2Former model (a converted 'mask2former' "
                     f"checkpoint); got a {what}{src}")


@functools.partial(jax.jit, static_argnums=(1, 2))
def propose_step(params: Params, config: Mask2FormerConfig, out_hw: tuple[int, int],
                 pixels: Array, resized_hw: Array, image_hw: Array, threshold: Array) -> Array:
    """Forward + postprocessing of a batch: pixels (B, Hb, Wb, 3) normalised and padded;
    resized_hw, image_hw (B, 2) int32 (traced); threshold () float32 -> (B, Q, Ho, Wo) bool
    on the static canvas `out_hw`. Shardings follow the committed inputs."""
    _, mask_logits = mask2former_forward(params, config, pixels)
    padded_h, padded_w = pixels.shape[1:3]
    if mask_logits.shape[2:] != (padded_h // 4, padded_w // 4):
        raise ValueError(f"mask logits {mask_logits.shape} are not at 1/4 of the input "
                         f"{pixels.shape}")
    return jax.vmap(lambda m, r, i: postprocess_masks(m, r, i, out_hw, threshold))(
        mask_logits, resized_hw, image_hw)


class StepCall(NamedTuple):
    """One jitted call of a `Proposer`: the indices of its images and their (H, W), the
    arguments of `propose_step` (inputs on the devices), its compiled-shape key and what it
    is (for error messages)."""

    idx: list[int]
    image_hw: list[tuple[int, int]]
    args: tuple[Any, ...]
    key: tuple[Any, ...]
    what: str


class Proposer:
    """Batched, jitted, sharded proposals: ``Proposer(model)(images) -> [(Q, H, W) bool]``.

    Args:
      model: a loaded Mask2Former (`iterprime_jax.load`): ``.params``, ``.config``.
      config: the proposal rule and bucketing (`ProposeConfig`; threshold 0.35).
      devices: devices to shard the image axis over (default: all local devices); params are
        replicated there (no copy when `iterprime_jax.load` already placed them so).
      max_batch: most images per jitted call (a group is padded to a power of two, then to a
        multiple of the device count, with copies of its last image); a call too large for
        the device memory is a `DeviceMemoryError` naming it.
    """

    def __init__(self, model: ProposerModel, config: ProposeConfig = ProposeConfig(),
                 devices: Sequence[Any] | None = None, max_batch: int = DEFAULT_MAX_BATCH):
        check_proposer(model, "model")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model_config = model.config
        self.precision = model.precision  # matmul precision
        self.config = config
        self.mesh = data_mesh(devices)
        self.devices = list(self.mesh.devices.flat)
        self.data, self.repl = data_shardings(self.mesh)
        self.params = jax.device_put(model.params, self.repl)
        self.max_batch = max_batch
        self.num_queries = int(model.config.num_queries)
        self.memory = MemoryCheck(self.devices)  # the devices' memory, when reported

    def _too_large(self, call: str, detail: str) -> DeviceMemoryError:
        fix = (f"pass a smaller max_batch, e.g. {max(1, self.max_batch // 2)}"
               if self.max_batch > 1 else "max_batch is already 1: use a smaller "
               "proposal_short_edge / max_size or devices with more memory")
        return DeviceMemoryError(
            f"max_batch {self.max_batch} is too large for the device memory: {call} does not "
            f"fit ({detail}); {fix}", call, detail, self.memory.device)

    def groups(self, sizes: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int], list[int]]]:
        """Indices of the images per jitted call: same bucket, at most `max_batch`."""
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            by_bucket.setdefault(bucket_shape(hw, self.config), []).append(i)
        out = []
        for shape, idx in by_bucket.items():
            out += [(shape, idx[k: k + self.max_batch])
                    for k in range(0, len(idx), self.max_batch)]
        return out

    def __call__(self, images: Sequence[Any], threshold: float | None = None
                 ) -> list[np.ndarray]:
        """Images ((H, W, 3) uint8 RGB or PIL) -> per image (Q, H, W) bool proposals.
        `threshold` overrides the config's (a traced value: no recompilation). Inputs go to
        the devices and masks come back by explicit transfers only."""
        results: list[np.ndarray | None] = [None] * len(images)
        for idx, hws, masks in self.device_masks(images, threshold):
            masks = np.asarray(jax.device_get(masks))
            for k, i in enumerate(idx):
                h, w = hws[k]
                results[i] = np.ascontiguousarray(masks[k, :, :h, :w])
        return results  # type: ignore[return-value]

    def calls(self, images: Sequence[Any], threshold: float | None = None
              ) -> list[StepCall]:
        """The jitted calls `device_masks` makes for `images` ((H, W, 3) uint8 RGB or PIL), one
        per group (`groups`), with their inputs on the devices (`propose_step(*call.args)`)."""
        t = self.config.threshold if threshold is None else check_threshold(threshold)
        rgb = [check_image(im, f"images[{i}]") for i, im in enumerate(images)]
        out = []
        n_dev = len(self.devices)
        cfg = self.config
        for shape, idx in self.groups([im.shape[:2] for im in rgb]):
            preps = [preprocess(rgb[i], cfg, canvas=shape, name=f"images[{i}]") for i in idx]
            b = round_up(bucket(len(preps)), n_dev)
            rows = [preps[min(k, len(preps) - 1)] for k in range(b)]
            out_hw = (round_up(max(p.image_hw[0] for p in preps), cfg.out_multiple),
                      round_up(max(p.image_hw[1] for p in preps), cfg.out_multiple))
            arrays = [np.stack([p.pixels for p in rows]),
                      np.asarray([p.resized_hw for p in rows], np.int32),
                      np.asarray([p.image_hw for p in rows], np.int32)]
            args = (self.params, self.model_config, out_hw,
                    *[jax.device_put(a, self.data) for a in arrays],
                    jax.device_put(np.float32(t), self.repl))
            out.append(StepCall(idx=idx, image_hw=[p.image_hw for p in preps], args=args,
                                key=(shape, b, out_hw, self.precision),
                                what=(f"a Mask2Former call on {b} images of {shape[0]}x"
                                      f"{shape[1]} px (masks {out_hw[0]}x{out_hw[1]})")))
        return out

    def device_masks(self, images: Sequence[Any], threshold: float | None = None
                     ) -> list[tuple[list[int], list[tuple[int, int]], Array]]:
        """The proposals left on the devices, per jitted call: (indices of its images, their
        (H, W), masks (b, Q, Ho, Wo) bool with image k's masks in the top-left (H, W) of row
        k, zero elsewhere; rows past the images repeat the last one)."""
        out = []
        for c in self.calls(images, threshold):
            with matmul_precision(self.precision):
                masks = self.memory.run(propose_step, c.key, c.args, c.what, self._too_large)
            out.append((c.idx, c.image_hw, masks))
        return out


def propose(model: ProposerModel, image_uint8: Any, threshold: float = 0.35,
            config: ProposeConfig = ProposeConfig()) -> np.ndarray:
    """Mask2Former proposals of one image: (Q, H, W) bool at the original size, every query,
    in query order (docs/method.md section 4: detectron2 resize 800/1333, normalise, zero pad to
    32; mask logits upsampled, cropped, resized to the image; sigmoid > `threshold`).

    model: `iterprime_jax.load` of a converted Mask2Former checkpoint; image_uint8: (H, W, 3)
    uint8 RGB or a PIL image.
    """
    t = check_threshold(threshold)
    check_proposer(model, "model")
    rgb = check_image(image_uint8, "image")
    return _proposer_for(model, config)([rgb], threshold=t)[0]


# One single-device Proposer per live model (and ProposeConfig), reused by `propose`: its
# parameters are placed once, its jitted step compiles once per input bucket.
_PROPOSERS: dict[int, tuple[weakref.ref, Proposer]] = {}


def _proposer_for(model: ProposerModel, config: ProposeConfig) -> Proposer:
    """The cached `Proposer` of `model` for `config` (any threshold; it is a call argument)."""
    key = id(model)
    hit = _PROPOSERS.get(key)
    if hit is not None and hit[0]() is model and hit[1].config == config:
        return hit[1]
    proposer = Proposer(model, config, devices=jax.local_devices()[:1], max_batch=1)
    _PROPOSERS[key] = (weakref.ref(model, lambda _, key=key: _PROPOSERS.pop(key, None)),
                       proposer)
    return proposer
