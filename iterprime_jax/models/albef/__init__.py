"""Flax port of ALBEF image-text matching (the IteRPrimE authors' backbone, `ALBEF.pth`).

`config` (AlbefConfig, an ITM config of the ALBEF layout: timm ViT + BERT whose layers from
`fusion_layer` on cross-attend to the image), the Flax modules named like the `ALBEF.pth` state
dict (`model`: `visual_encoder.*`, `text_encoder.bert.*`, `itm_head`), and the checkpoint reader
(`convert`: key table, skipped training-only entries, `pos_embed` interpolation). The block
maths is shared with BLIP (`iterprime_jax.models.blip.vision` / `.text`); the functional API
(`iterprime_jax.models.blip.modeling`: init_params, encode_image, itm_logits, ...) serves both.
"""

from .config import AlbefConfig, AlbefTextConfig
from .model import AlbefForITM

__all__ = ["AlbefConfig", "AlbefForITM", "AlbefTextConfig"]
