"""Flax port of BLIP image-text matching (HF `BlipForImageTextRetrieval`).

`config` (BlipConfig), the Flax modules named like the PyTorch state dict (`vision`, `text`,
`itm`, shared layers in `common`), the functional API (`modeling`: init_params, encode_image,
itm_logits, ...), preprocessing (`preprocess`) and the checkpoint key table (`convert`).
"""

from .itm import BlipForImageTextRetrieval
from .text import BlipTextModel
from .vision import BlipVisionModel

__all__ = ["BlipForImageTextRetrieval", "BlipTextModel", "BlipVisionModel"]
