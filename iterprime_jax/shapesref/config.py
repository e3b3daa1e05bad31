"""ShapesRef vocabulary (shapes, colours, sizes, positions, relations), split and file names,
and `ShapesRefConfig`, every knob of the generator."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
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

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
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
BACKGROUNDS: tuple[str, ...] = ("gradient", "stripes", "noise")


@dataclass(frozen=True)
class ShapesRefConfig:
    """Every knob of the generator. Frozen and hashable; stored in the build stamp.

    Radii are fractions of ``image_size`` (half-extent of a shape); ``position_margin`` is the
    fraction of ``image_size`` by which a target must be more extreme than every other candidate
    (and the minimum centre offset of a relation).
    """

    image_size: int = 64
    num_train: int = 2000
    num_val: int = 200
    num_test_a: int = 200
    num_test_b: int = 200
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 6
    max_refs_per_image: int = 3
    shapes: tuple[str, ...] = SHAPE_NAMES
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    small_radius: tuple[float, float] = (0.08, 0.10)
    large_radius: tuple[float, float] = (0.15, 0.18)
    min_visible: float = 0.5
    min_visible_target: float = 0.8
    position_margin: float = 0.08
    pixel_noise: float = 6.0
    colour_jitter: int = 12

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
