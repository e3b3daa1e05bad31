"""Image preprocessing (as HF `BlipImageProcessor`) and tokenisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .config import BlipConfig


def as_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """Accept (H, W, 3) uint8, (H, W) / (H, W, 1) grayscale or (H, W, 4) RGBA uint8, or a PIL
    image; return (H, W, 3) uint8 RGB. Anything else is a ValueError naming `name`."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (H, W, 3), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise ValueError(f"{name} must be (H, W, 3) RGB, (H, W) gray or (H, W, 4) RGBA; "
                         f"got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = np.asarray(Image.fromarray(arr, "RGBA").convert("RGB"))
    return arr


def preprocess_image(image_uint8_hwc: Any, config: BlipConfig) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) float32: bicubic resize (PIL), /255, normalise.

    Matches HF `BlipImageProcessor` (PIL backend) for the checkpoint's mean/std.
    """
    rgb = as_rgb_uint8(image_uint8_hwc)
    h, w = config.vision.image_hw
    resized = Image.fromarray(rgb).resize((w, h), resample=Image.BICUBIC)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    return (x - mean) / std


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> input_ids, attention_mask, each (B, max_length) int32, padded/truncated."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise ValueError("tokenize: empty list of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"tokenize: text {i} is empty or not a string: {t!r}")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
