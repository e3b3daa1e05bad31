"""Host-side input of the proposal network, exactly as detectron2 for the authors' config.

The IteRPrimE authors ran Mask2Former Swin-L COCO panoptic through detectron2 (docs/method.md
section 4). At test time detectron2 does, per RGB uint8 image:

1. ``ResizeShortestEdge(800, 1333)``: short side to 800, long side at most 1333, sizes rounded
   as ``int(x + 0.5)`` (`resized_shape`); the uint8 image is resized with PIL bilinear;
2. ``(x - pixel_mean) / pixel_std`` on 0-255 float32 values;
3. ``ImageList.from_tensors``: the normalised tensor is zero-padded bottom/right to a multiple
   of the size divisibility (32); a batch is padded to its largest member.

`ProposeConfig` holds these constants and the sigmoid threshold of the proposals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from ...buckets import round_up
from ...image_input import to_rgb_uint8

MIN_IMAGE_SIDE = 2


@dataclasses.dataclass(frozen=True)
class ProposeConfig:
    """The authors' proposal rule (detectron2 defaults of
    ``maskformer2_swin_large_IN21k_384_bs16_100ep``) and the bucketing of the batched form.

    Attributes:
      short_edge: ResizeShortestEdge target of the short side.
      max_size: ResizeShortestEdge cap of the long side.
      size_divisibility: the normalised image is zero-padded to a multiple of this.
      pixel_mean, pixel_std: RGB normalisation on 0-255 values.
      threshold: a pixel belongs to a proposal iff sigmoid(mask logit) > threshold.
      bucket_multiple: the batched form pads every image to (padded height, padded width)
        rounded up to this multiple (a multiple of `size_divisibility`); one compilation per
        bucket. With the default (= size_divisibility) the input is exactly detectron2's
        single-image input; a coarser bucket is detectron2's batched input (a batch padded to
        its largest member), which changes the logits slightly (Mask2Former has no padding
        mask).
      out_multiple: the batched form writes masks on a canvas of the original size rounded up
        to this multiple (one compilation per canvas).
    """

    short_edge: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    threshold: float = 0.35
    bucket_multiple: int = 32
    out_multiple: int = 64

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if self.short_edge < 1 or self.max_size < self.short_edge:
            raise ValueError(f"ProposeConfig: need 1 <= short_edge <= max_size, got "
                             f"short_edge={self.short_edge}, max_size={self.max_size}")
        if self.size_divisibility < 4 or self.size_divisibility % 4:
            raise ValueError("ProposeConfig: size_divisibility must be a positive multiple of "
                             f"4 (mask logits are at 1/4 resolution), got "
                             f"{self.size_divisibility}")
        if self.bucket_multiple < 1 or self.bucket_multiple % self.size_divisibility:
            raise ValueError(f"ProposeConfig: bucket_multiple {self.bucket_multiple} must be a "
                             f"positive multiple of size_divisibility {self.size_divisibility}")
        if self.out_multiple < 1:
            raise ValueError(f"ProposeConfig: out_multiple must be >= 1, got "
                             f"{self.out_multiple}")
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError(f"ProposeConfig: pixel_std must be positive, got {self.pixel_std}")

    def replace(self, **kw: Any) -> ProposeConfig:
        return dataclasses.replace(self, **kw)


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """The proposal threshold as a float strictly inside (0, 1); ValueError naming it else."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise ValueError(f"{name} must be a number in (0, 1), got {threshold!r}")
    t = float(threshold)
    if not 0.0 < t < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must lie strictly between 0 and 1 (a sigmoid probability), "
                         f"got {threshold!r}")
    return t


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """An image for the proposal network -> (H, W, 3) uint8 RGB, by the library's one intake
    rule (`iterprime_jax.image_input.to_rgb_uint8`: grey and RGBA are converted as PIL's
    ``convert("RGB")`` does, which is also detectron2's ``read_image``; 16-bit images are
    rescaled). Images smaller than `MIN_IMAGE_SIDE` pixels on a side are refused with a
    ValueError naming `name`, as is anything `to_rgb_uint8` refuses."""
    arr = to_rgb_uint8(image, name)
    if min(arr.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {arr.shape[0]}x{arr.shape[1]} pixels; proposals need at "
                         f"least {MIN_IMAGE_SIDE} pixels on each side")
    return arr


def resized_shape(height: int, width: int, short_edge: int = 800, max_size: int = 1333
                  ) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: (new_h, new_w)."""
    size = float(short_edge)
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


class Preprocessed(NamedTuple):
    """One image ready for the network.

    pixels (Hp, Wp, 3) float32: normalised, zero-padded to a multiple of the size
    divisibility (or to a bucket); resized_hw: the real (h, w) inside it; image_hw: the
    original size (masks are returned at it).
    """

    pixels: np.ndarray
    resized_hw: tuple[int, int]
    image_hw: tuple[int, int]


def padded_shape(resized_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    return round_up(resized_hw[0], multiple), round_up(resized_hw[1], multiple)


def bucket_shape(image_hw: tuple[int, int], config: ProposeConfig) -> tuple[int, int]:
    """The network input size the batched form uses for an image of size image_hw."""
    resized = resized_shape(*image_hw, config.short_edge, config.max_size)
    return padded_shape(resized, config.bucket_multiple)


def preprocess(image: Any, config: ProposeConfig = ProposeConfig(),
               canvas: tuple[int, int] | None = None, name: str = "image") -> Preprocessed:
    """(H, W, 3) uint8 RGB -> `Preprocessed` (resize with PIL bilinear, normalise, zero pad).

    canvas: pad to this (Hc, Wc) instead of the next multiple of ``size_divisibility``; it
    must hold the resized image.
    """
    rgb = check_image(image, name)
    h, w = rgb.shape[:2]
    nh, nw = resized_shape(h, w, config.short_edge, config.max_size)
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    mean = np.asarray(config.pixel_mean, np.float32)
    std = np.asarray(config.pixel_std, np.float32)
    x = (resized.astype(np.float32) - mean) / std
    ph, pw = padded_shape((nh, nw), config.size_divisibility) if canvas is None else canvas
    if ph < nh or pw < nw:
        raise ValueError(f"canvas {(ph, pw)} cannot hold the resized {name} {(nh, nw)}")
    pixels = np.zeros((ph, pw, 3), np.float32)
    pixels[:nh, :nw] = x
    return Preprocessed(pixels=pixels, resized_hw=(nh, nw), image_hw=(h, w))
