"""ShapesRef vocabulary (shapes, colours, sizes, positions, relations), split and file names,
and `ShapesRefConfig`, every knob of the generator."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 2
DATASET_DIR = "shapesref"
REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
STAMP_FILE = "shapesref_config.json"
IMAGE_DIR = "images"

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
KINDS: tuple[str, ...] = ("attribute", "position", "relation")
SPLIT_KINDS: dict[str, tuple[str, ...]] = {
    "train": KINDS,
    "val": KINDS,
    "testA": ("attribute",),
    "testB": ("position", "relation"),
}

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
ROUND_SHAPES = frozenset({"circle"})
SIZES: tuple[str, ...] = ("small", "large")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (235, 210, 45),
    "purple": (145, 55, 185),
    "cyan": (45, 200, 210),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
POSITIONS: tuple[str, ...] = DIRECTIONS + ("top left", "top right", "bottom left", "bottom right")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes", "noise")


@dataclass(frozen=True)
class ShapesRefConfig:
    """Every knob of the generator. Frozen and hashable; stored in the build stamp.

    Radii are fractions of ``image_size`` (half-extent of a shape); ``position_margin`` is the
    fraction of ``image_size`` by which a target must be more extreme than every other candidate
    (and the minimum centre offset of a relation).

    Version 2 defaults: 80x80 images, one object per cell of a 5x5 grid of 16-px cells (the
    shipped model's 16-px patches), centred in its cell up to ``jitter`` of a cell, so every
    object lies in one patch (up to a pixel); four very distinct shapes; flat or low-contrast
    backgrounds (``background_contrast``: the largest per-channel difference of a gradient's
    two colours).
    ``grid_margin`` rings of border cells stay empty: IteRPrimE upsamples the heat map bicubically
    with clamped borders, which overshoots towards the image border, so a hot border cell puts
    the heat's argmax on the image's edge pixels, outside any object (no candidate); objects in
    the inner 3x3 cells keep the argmax on them. ``grid=0`` places objects freely (version 1's
    layout, with overlaps).
    """

    image_size: int = 80
    grid: int = 5
    grid_margin: int = 1
    jitter: float = 0.1
    num_train: int = 2000
    num_val: int = 200
    num_test_a: int = 200
    num_test_b: int = 200
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 6
    max_refs_per_image: int = 3
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    small_radius: tuple[float, float] = (0.055, 0.06)
    large_radius: tuple[float, float] = (0.085, 0.09)
    min_visible: float = 0.5
    min_visible_target: float = 0.8
    position_margin: float = 0.1
    pixel_noise: float = 3.0
    colour_jitter: int = 8
    backgrounds: tuple[str, ...] = ("flat", "gradient")
    background_contrast: float | None = 25.0

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 2 <= self.min_objects <= self.max_objects:
            raise ValueError("need 2 <= min_objects <= max_objects")
        if self.max_refs_per_image < 1:
            raise ValueError("max_refs_per_image must be >= 1")
        bad = [s for s in self.shapes if s not in SHAPE_NAMES]
        if bad or len(set(self.shapes)) < 2:
            raise ValueError(f"shapes must be >= 2 distinct of {SHAPE_NAMES}, got {self.shapes}")
        bad = [c for c in self.colours if c not in COLOUR_RGB]
        if bad or len(set(self.colours)) < 2:
            raise ValueError(f"colours must be >= 2 distinct of {tuple(COLOUR_RGB)}")
        inner = self.grid - 2 * self.grid_margin
        if self.grid < 0 or self.grid_margin < 0 or (self.grid and inner * inner
                                                     < self.max_objects):
            raise ValueError(f"grid must be 0 or have >= max_objects cells inside its margin, "
                             f"got grid {self.grid}, grid_margin {self.grid_margin}")
        if self.grid and not 0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), got {self.jitter}")
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            raise ValueError(f"backgrounds must be >= 1 of {BACKGROUNDS}, got {self.backgrounds}")
        if any(n < 0 for n in self.num_images.values()):
            raise ValueError("image counts must be >= 0")

    @property
    def num_images(self) -> dict[str, int]:
        """Images per split, in `SPLITS` order."""
        return {
            "train": self.num_train,
            "val": self.num_val,
            "testA": self.num_test_a,
            "testB": self.num_test_b,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
