"""Flax port of BLIP image-text matching (HF `BlipForImageTextRetrieval`)."""

from .itm import BlipForImageTextRetrieval
from .text import BlipTextModel
from .vision import BlipVisionModel

__all__ = ["BlipForImageTextRetrieval", "BlipTextModel", "BlipVisionModel"]
