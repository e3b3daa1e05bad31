"""The one image intake of the library: what `segment*`, `propose` / `Proposer` and the
one-image CLI accept as an image, turned into (H, W, 3) uint8 RGB.

Accepted:

* a PIL image of any mode PIL converts to RGB (``1``, ``L``, ``P``, ``LA``, ``RGB``, ``RGBA``,
  ``CMYK``, ``YCbCr``, ...; an alpha channel is dropped, as PIL's ``convert("RGB")`` and
  detectron2's ``read_image`` do);
* 16-bit PIL images: mode ``I;16`` (any byte order) is rescaled to 8 bits (value / 257,
  rounded: 65535 -> 255); mode ``I`` (32-bit integer, how some readers return 16-bit files) by
  its range: values in 0..255 are taken as 8-bit, values in 0..65535 as 16-bit (rescaled),
  anything else (negative, above 65535) is refused;
* a numpy-like array (H, W) / (H, W, 1) grey, (H, W, 3) RGB or (H, W, 4) RGBA, of dtype
  ``uint8`` or ``uint16`` (rescaled to 8 bits as above).

Refused, with a ValueError naming the input: float images (PIL mode ``F``, float arrays: 0..1
or 0..255 is ambiguous; convert explicitly, e.g. ``(img * 255).round().astype(np.uint8)``),
other dtypes, other shapes, empty images. A path (``str`` / ``os.PathLike`` / ``bytes``) is a
TypeError: the library does not read files; load the image first (e.g.
``PIL.Image.open(path)``), or use the one-image CLI, which does.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["to_rgb_uint8"]

_HINT_FLOAT = ("convert it to 8 bits explicitly, e.g. (img * 255).round().astype(np.uint8) "
               "for values in [0, 1]")


def _rescale_16(arr: np.ndarray) -> np.ndarray:
    """0..65535 integers -> 0..255 uint8 (value / 257, rounded)."""
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _from_pil(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode == "F":
        raise ValueError(f"{name} is a floating-point image (PIL mode F); {_HINT_FLOAT}")
    if mode.startswith("I;16"):
        return _rescale_16(np.asarray(image).astype(np.uint16))
    if mode == "I":
        arr = np.asarray(image)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name} is a 32-bit integer image (PIL mode I) with values in "
                             f"[{lo}, {hi}], outside 0..65535; convert it to 8 bits "
                             "explicitly")
        return arr.astype(np.uint8) if hi <= 255 else _rescale_16(arr)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ValueError(f"{name}: cannot convert a PIL image of mode {mode} to RGB ({e})"
                         ) from None


def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """An image as the library accepts it (module docstring) -> (H, W, 3) uint8 RGB.

    Raises:
      TypeError: `image` is a path (load it first).
      ValueError: a dtype, mode or shape that is not an image, naming `name`.
    """
    if isinstance(image, str | bytes | os.PathLike):
        raise TypeError(f"{name} is a path ({image!r}), not an image: load it first, e.g. "
                        "PIL.Image.open(path) or np.asarray(PIL.Image.open(path))")
    arr = _from_pil(image, name) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.dtype == np.uint16 or (arr.dtype.kind == "u" and arr.dtype.itemsize == 2):
        arr = _rescale_16(arr)
    elif arr.dtype != np.uint8:
        hint = _HINT_FLOAT if arr.dtype.kind == "f" else "convert it to uint8"
        raise ValueError(f"{name} must be uint8 (or uint16) (H, W, 3), got dtype {arr.dtype}; "
                         f"{hint}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name} must be (H, W, 3) RGB, (H, W) gray or (H, W, 4) RGBA; "
                         f"got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr), "RGBA").convert("RGB"))
    return np.ascontiguousarray(arr)
