"""Image preprocessing (as HF `BlipImageProcessor`) and tokenisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ...image_input import to_rgb_uint8
from .config import BlipConfig


def as_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """An image -> (H, W, 3) uint8 RGB by the library's one intake rule
    (`iterprime_jax.image_input.to_rgb_uint8`: uint8/uint16 grey, RGB or RGBA arrays, PIL
    images, 16-bit ones rescaled); anything else is a ValueError naming `name`."""
    return to_rgb_uint8(image, name)


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
