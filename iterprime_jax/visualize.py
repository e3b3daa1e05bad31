"""Overlay helpers: heat map colouring and mask outlines (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, a jet-like colour map."""
    x = np.clip(heat, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured heat map onto the image and outline the mask in white."""
    out = (1 - alpha) * image.astype(np.float32) + alpha * colorize(heat).astype(np.float32)
    out = out.astype(np.uint8)
    if mask is not None and mask.any():
        edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 150))
        out[edge] = 255
    return out
