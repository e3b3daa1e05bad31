"""TFDS builder for referring-segmentation datasets in the refer layout (see README.md)."""

from tfds_refcoco.refcoco import (
    RefCocoMasks,
    RefCocoMasksConfig,
    canonical_config_name,
    load_split,
    make_builder,
)
from tfds_refcoco.refer import LAYOUTS, SPLITS, ReferFormatError, ReferLayout, load_refer

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "RefCocoMasks",
    "RefCocoMasksConfig",
    "ReferFormatError",
    "ReferLayout",
    "canonical_config_name",
    "load_refer",
    "load_split",
    "make_builder",
]
