"""ShapesRef scene data: `SceneObject` (a drawn shape and its masks), `Scene` (an image and its
objects) and `Ref` (a referring expression for one object)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import ShapesRefConfig
from .grammar import Expression


@dataclass(eq=False)
class SceneObject:
    """One drawn shape. ``center`` is (x, y) in pixels (pixel i spans [i, i+1))."""

    shape: str
    colour: str
    size: str
    center: tuple[float, float]
    radius: float
    polygon: tuple[float, ...] | None  # flat x0,y0,x1,y1,... for polygonal shapes
    full_mask: np.ndarray  # bool HxW, the whole shape
    mask: np.ndarray  # bool HxW, the visible part (what is annotated)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def visible_fraction(self) -> float:
        return float(self.mask.sum()) / max(1, int(self.full_mask.sum()))

    @property
    def occluded(self) -> bool:
        return bool((self.full_mask != self.mask).any())

    @property
    def bbox(self) -> list[float]:
        """COCO box [x, y, w, h] of the visible mask."""
        ys, xs = np.nonzero(self.mask)
        x0, y0 = int(xs.min()), int(ys.min())
        return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


@dataclass(eq=False)
class Scene:
    """A rendered scene. Objects are in paint order (later ones occlude earlier ones).

    ``targets`` lists the objects that have a valid expression of ``kind`` (the designed target
    first).
    """

    image: np.ndarray  # uint8 HxWx3
    objects: list[SceneObject]
    kind: str
    targets: tuple[int, ...]
    background: str
    config: ShapesRefConfig = field(repr=False)


@dataclass(eq=False)
class Ref:
    """A referring expression for ``scene.objects[target]``: one `Expression` per sentence."""

    scene: Scene
    target: int
    kind: str
    expressions: list[Expression]
    sentences: list[str]
