"""ALBEF model configuration: `AlbefTextConfig` (BERT + `fusion_layer`) and `AlbefConfig`.

`AlbefConfig` is a `BlipConfig` (same fields: vision, text, image mean/std, compute dtype), so
every ITM code path (Grad-CAM, `segment`, evaluation) takes it as it takes BLIP's; the
architecture differs in what `iterprime_jax.models.albef.model` builds from it. Defaults are
ALBEF-base as the IteRPrimE authors run it: ViT-B/16 at 256 px (LayerNorm eps 1e-6, exact GELU),
BERT-base with `fusion_layer` 6 (ALBEF's `config_bert.json`), CLIP mean/std.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..blip.config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, BlipConfig, TextConfig, VisionConfig

#: The config file of a converted ALBEF checkpoint (tells `load` the architecture).
ALBEF_CONFIG_NAME = "albef_config.json"


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
class AlbefConfig(BlipConfig):
    """The ALBEF ITM model (image tower, text tower with fusion layers, ITM head).

    `projection_dim` is unused (the contrastive projections are not converted)."""

    vision: VisionConfig = albef_vision()
    text: TextConfig = ALBEF_BERT_CONFIG
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.text, AlbefTextConfig):
            raise ValueError(f"AlbefConfig.text must be an AlbefTextConfig, got "
                             f"{type(self.text).__name__}")
        if self.text.encoder_hidden_size != self.vision.hidden_size:
            raise ValueError(f"text encoder_width {self.text.encoder_hidden_size} != vision "
                             f"width {self.vision.hidden_size}")

    @property
    def fusion_layer(self) -> int:
        return self.text.fusion_layer

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "arch": "albef"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlbefConfig:
        d = dict(d)
        d.pop("arch", None)
        vd = dict(d.pop("vision", {}))
        if isinstance(vd.get("image_size"), list):
            vd["image_size"] = tuple(vd["image_size"])
        text = AlbefTextConfig(**d.pop("text", {}))
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(vision=VisionConfig(**vd), text=text, **d)

    @classmethod
    def load(cls, path: str | Path) -> AlbefConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
