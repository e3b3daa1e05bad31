"""ALBEF model configuration: `AlbefTextConfig` (BERT + `fusion_layer`) and `AlbefConfig`.

`AlbefConfig` holds what ALBEF has (vision, text with its fusion layer, image mean/std,
compute dtype); it shares the tower configs and their JSON readers with BLIP's config, not
its class. Defaults are ALBEF-base as the IteRPrimE authors run it: ViT-B/16 at 256 px
(LayerNorm eps 1e-6, exact GELU), BERT-base with `fusion_layer` 6 (ALBEF's
`config_bert.json`), CLIP mean/std.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from ...types import DType
from ..blip.common import compute_dtype
from ..blip.config import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    TextConfig,
    VisionConfig,
    norm_from_dict,
    vision_from_dict,
)

#: Keys of `albef_config.json` files written before AlbefConfig stood on its own (ignored).
LEGACY_KEYS = ("arch", "projection_dim")


def albef_vision(image_size: int = 256, patch_size: int = 16, width: int = 768,
                 depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0) -> VisionConfig:
    """ALBEF's timm ViT: pre-LN blocks, LayerNorm eps 1e-6, exact GELU, FFN = mlp_ratio * width."""
    return VisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=width,
                        intermediate_size=int(width * mlp_ratio), num_hidden_layers=depth,
                        num_attention_heads=heads, layer_norm_eps=1e-6, hidden_act="gelu")


@dataclasses.dataclass(frozen=True)
class AlbefTextConfig(TextConfig):
    """ALBEF's BERT (`config_bert.json`): layers < `fusion_layer` are text-only; layers from
    `fusion_layer` on cross-attend to the image (`encoder_hidden_size` = ALBEF's
    `encoder_width`). Embeddings add token type 0 (`type_vocab_size` rows)."""

    vocab_size: int = 30522
    fusion_layer: int = 6
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.fusion_layer < self.num_hidden_layers:
            raise ValueError(f"fusion_layer {self.fusion_layer} must be in [0, "
                             f"{self.num_hidden_layers}) for {self.num_hidden_layers} layers")

    @classmethod
    def from_bert_config(cls, d: Mapping[str, Any]) -> AlbefTextConfig:
        """From ALBEF's `config_bert.json` dict (HF BERT keys plus `fusion_layer`,
        `encoder_width`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        if "encoder_width" in d:
            kw["encoder_hidden_size"] = int(d["encoder_width"])
        return cls(**kw)


#: ALBEF's `config_bert.json` (BERT-base, fusion layer 6, encoder width 768).
ALBEF_BERT_CONFIG = AlbefTextConfig()


@dataclasses.dataclass(frozen=True)
class AlbefConfig:
    """The ALBEF ITM model (image tower, text tower with fusion layers, ITM head): its own
    fields, not BLIP's (no contrastive projection: ALBEF's is not converted). The towers'
    configs (`VisionConfig`, and `AlbefTextConfig`, a BERT `TextConfig` with `fusion_layer`)
    and the preprocessing constants are the ones BLIP's config uses, so the ITM code paths
    (Grad-CAM, `segment`, evaluation) read both alike.

    `dtype` is the compute dtype (a name is accepted and converted); parameters stay float32.
    """

    vision: VisionConfig = albef_vision()
    text: AlbefTextConfig = ALBEF_BERT_CONFIG
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    dtype: DType = jnp.dtype(jnp.float32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", compute_dtype(self.dtype))
        if not isinstance(self.text, AlbefTextConfig):
            raise ValueError(f"AlbefConfig.text must be an AlbefTextConfig, got "
                             f"{type(self.text).__name__}")
        if self.text.encoder_hidden_size != self.vision.hidden_size:
            raise ValueError(f"text encoder_width {self.text.encoder_hidden_size} != vision "
                             f"width {self.vision.hidden_size}")

    @property
    def fusion_layer(self) -> int:
        """The first text layer that cross-attends to the image (`text.fusion_layer`)."""
        return self.text.fusion_layer

    def replace(self, **kw: Any) -> AlbefConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the dtype by name)."""
        return {**dataclasses.asdict(self), "dtype": self.dtype.name}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlbefConfig:
        """From `to_dict`'s dict; also reads the files written while AlbefConfig was a
        BlipConfig (their `arch` tag and unused `projection_dim` are dropped)."""
        d = dict(d)
        for legacy in LEGACY_KEYS:
            d.pop(legacy, None)
        vision = vision_from_dict(d.pop("vision", {}))
        text = AlbefTextConfig(**d.pop("text", {}))
        return cls(vision=vision, text=text, **norm_from_dict(d))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> AlbefConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
