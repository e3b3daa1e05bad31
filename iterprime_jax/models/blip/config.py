"""BLIP model configuration: `VisionConfig`, `TextConfig`, `BlipConfig` (frozen, hashable).

`BlipConfig` describes the ITM model and is read from an HF `config.json`
(`BlipConfig.from_hf_dict`) or from the `blip_config.json` of a converted checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from ...types import DType
from .common import compute_dtype

# CLIP / BLIP image normalisation constants (BlipImageProcessor defaults).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """ViT image encoder (HF `BlipVisionConfig`)."""

    image_size: int | tuple[int, int] = 384  # (H, W) for non-square inputs
    patch_size: int = 16
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    num_channels: int = 3

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (gh, gw)."""
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def image_hw(self) -> tuple[int, int]:
        """Input image size (H, W)."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """BERT text encoder with cross-attention (HF `BlipTextConfig`)."""

    vocab_size: int = 30524
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    encoder_hidden_size: int = 768
    pad_token_id: int = 0


def vision_from_dict(d: Mapping[str, Any]) -> VisionConfig:
    """A `VisionConfig` from its JSON dict (an `image_size` list becomes the (H, W) tuple)."""
    d = dict(d)
    if isinstance(d.get("image_size"), list):
        d["image_size"] = tuple(d["image_size"])
    return VisionConfig(**d)


def norm_from_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """`d` with `image_mean` / `image_std` (JSON lists) as float tuples (what BLIP's and
    ALBEF's configs share besides their towers)."""
    d = dict(d)
    for k in ("image_mean", "image_std"):
        if k in d:
            d[k] = tuple(float(x) for x in d[k])
    return d


@dataclasses.dataclass(frozen=True)
class BlipConfig:
    """The whole ITM model: vision + text + heads, plus preprocessing constants.

    `dtype` is the compute dtype, a `jnp.dtype` (``jnp.float32`` or ``jnp.bfloat16``; a name
    is accepted and converted); parameters stay float32. JSON files hold its name.
    """

    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    projection_dim: int = 256
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    dtype: DType = jnp.dtype(jnp.float32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", compute_dtype(self.dtype))

    def replace(self, **kw: Any) -> BlipConfig:
        return dataclasses.replace(self, **kw)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the dtype by name)."""
        return {**dataclasses.asdict(self), "dtype": self.dtype.name}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlipConfig:
        d = dict(d)
        vision = vision_from_dict(d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        return cls(vision=vision, text=text, **norm_from_dict(d))

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None
                     ) -> BlipConfig:
        """Build from an HF `BlipConfig` dict (`config.json`) and optional
        `preprocessor_config.json` dict."""
        vc = hf.get("vision_config") or {}
        tc = hf.get("text_config") or {}
        vfields = {f.name for f in dataclasses.fields(VisionConfig)}
        tfields = {f.name for f in dataclasses.fields(TextConfig)}
        vision = VisionConfig(**{k: v for k, v in vc.items() if k in vfields})
        text_kw = {k: v for k, v in tc.items() if k in tfields}
        text_kw.setdefault("encoder_hidden_size", vision.hidden_size)
        text = TextConfig(**text_kw)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        if preprocessor:
            mean = tuple(float(x) for x in preprocessor.get("image_mean", mean))
            std = tuple(float(x) for x in preprocessor.get("image_std", std))
        proj = int(hf.get("image_text_hidden_size", 256))
        return cls(vision=vision, text=text, projection_dim=proj, image_mean=mean, image_std=std)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> BlipConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
