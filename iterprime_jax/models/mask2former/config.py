"""Frozen configs of the Mask2Former port: `SwinConfig` (backbone) and `Mask2FormerConfig`.

Both mirror the HF configs (`transformers.SwinConfig`, `transformers.Mask2FormerConfig`) field
for field where the forward pass needs them, are hashable (static under `jax.jit`) and are
built from an HF `config.json` dict with `Mask2FormerConfig.from_hf_dict`.
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

# detectron2 / HF Mask2Former image normalisation (ImageNet, on 0-255 values).
M2F_IMAGE_MEAN = (123.675, 116.280, 103.530)
M2F_IMAGE_STD = (58.395, 57.120, 57.375)


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _freeze_lists(obj: Any) -> None:
    """Turn list fields of a frozen dataclass into tuples (JSON gives lists; jit needs hashes)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, list):
            object.__setattr__(obj, f.name, _tuple(v))


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """Swin transformer backbone (HF `SwinConfig`, used through `SwinBackbone`).

    `out_features` names the stages ("stem", "stage1", ...) whose pre-downsampling feature maps,
    each through its own LayerNorm (`hidden_states_norms`), feed the pixel decoder.
    """

    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    use_absolute_embeddings: bool = False
    out_features: tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4")

    def __post_init__(self) -> None:
        _freeze_lists(self)
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"SwinConfig: depths {self.depths} and num_heads {self.num_heads} "
                             "must have one entry per stage")
        if self.use_absolute_embeddings:
            raise ValueError("SwinConfig: use_absolute_embeddings=True is not supported "
                             "(Mask2Former's Swin backbones use relative position bias only)")
        bad = [f for f in self.out_features if f not in self.stage_names]
        if bad or not self.out_features:
            raise ValueError(f"SwinConfig: out_features {self.out_features} must be a non-empty "
                             f"subset of {self.stage_names}")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return ("stem",) + tuple(f"stage{i}" for i in range(1, len(self.depths) + 1))

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channels of each of `stage_names`: stem embed_dim, stage i embed_dim * 2^(i-1)."""
        return (self.embed_dim,) + tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the `out_features` maps, in order."""
        dims = dict(zip(self.stage_names, self.stage_dims, strict=True))
        return tuple(dims[f] for f in self.out_features)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> SwinConfig:
        if d.get("model_type", "swin") != "swin":
            raise ValueError(f"backbone_config has model_type {d.get('model_type')!r}; only "
                             "'swin' backbones are supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: _tuple(v) for k, v in d.items() if k in fields}
        if isinstance(kw.get("patch_size"), tuple):
            p = kw["patch_size"]
            if p[0] != p[1]:
                raise ValueError(f"non-square Swin patch_size {p} is not supported")
            kw["patch_size"] = int(p[0])
        if "out_features" not in kw and "stage_names" in d:
            kw["out_features"] = tuple(d["stage_names"][1:])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Mask2FormerConfig:
    """`Mask2FormerForUniversalSegmentation` with a Swin backbone.

    `num_labels` counts the classes without the "no object" class (class logits have
    `num_labels + 1` entries). `dtype` is the compute dtype, a `jnp.dtype` (``jnp.float32`` or
    ``jnp.bfloat16``; a name is accepted and converted); parameters stay float32. JSON files
    hold its name.
    """

    backbone: SwinConfig = SwinConfig()
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    activation_function: str = "relu"
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4
    num_queries: int = 100
    num_labels: int = 133
    feature_strides: tuple[int, ...] = (4, 8, 16, 32)
    image_mean: tuple[float, float, float] = M2F_IMAGE_MEAN
    image_std: tuple[float, float, float] = M2F_IMAGE_STD
    dtype: DType = jnp.dtype(jnp.float32)

    def __post_init__(self) -> None:
        _freeze_lists(self)
        object.__setattr__(self, "dtype", compute_dtype(self.dtype))
        if isinstance(self.backbone, Mapping):
            object.__setattr__(self, "backbone", SwinConfig(**self.backbone))
        if len(self.backbone.out_features) < self.num_feature_levels:
            raise ValueError(f"Mask2Former needs >= {self.num_feature_levels} backbone feature "
                             f"maps, out_features is {self.backbone.out_features}")
        if len(self.feature_strides) != len(self.backbone.out_features):
            raise ValueError(f"feature_strides {self.feature_strides} must have one entry per "
                             f"backbone out_feature {self.backbone.out_features}")
        if self.feature_size % 32 or self.feature_size % self.num_attention_heads:
            raise ValueError(f"feature_size {self.feature_size} must be a multiple of 32 "
                             "(GroupNorm(32)) and of num_attention_heads")
        if self.hidden_dim % self.num_attention_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.decoder_layers < 1:
            raise ValueError("decoder_layers must be >= 1")

    @property
    def num_feature_levels(self) -> int:
        """Levels of the deformable encoder and the masked-attention decoder (HF fixes it: 3)."""
        return 3

    @property
    def num_fpn_levels(self) -> int:
        """Backbone maps fed to the FPN-style lateral convs (HF: log2(min stride / common))."""
        stride = min(self.feature_strides[-self.num_feature_levels:])
        return int(stride).bit_length() - int(self.common_stride).bit_length()

    def replace(self, **kw: Any) -> Mask2FormerConfig:
        return dataclasses.replace(self, **kw)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {**dataclasses.asdict(self), "dtype": self.dtype.name}
        d["model_type"] = "mask2former"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Mask2FormerConfig:
        d = {k: v for k, v in d.items() if k != "model_type"}
        return cls(backbone=SwinConfig(**dict(d.pop("backbone", {}))), **d)

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any],
                     preprocessor: Mapping[str, Any] | None = None) -> Mask2FormerConfig:
        """Build from an HF `Mask2FormerConfig` dict (`config.json`, with `backbone_config`)
        and an optional `preprocessor_config.json` dict (image mean/std on 0-255 values)."""
        if hf.get("model_type") != "mask2former":
            raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected "
                             "'mask2former'")
        bb = hf.get("backbone_config")
        if not isinstance(bb, Mapping):
            raise ValueError("config.json has no backbone_config dict (a Swin config is needed)")
        fields = {f.name for f in dataclasses.fields(cls)} - {"backbone", "num_labels", "dtype"}
        kw = {k: _tuple(v) for k, v in hf.items() if k in fields}
        if "id2label" in hf:
            kw["num_labels"] = len(hf["id2label"])
        elif "num_labels" in hf:
            kw["num_labels"] = int(hf["num_labels"])
        if preprocessor:
            for ours, theirs in (("image_mean", "image_mean"), ("image_std", "image_std")):
                if theirs in preprocessor:
                    vals = [float(x) for x in preprocessor[theirs]]
                    # HF stores ImageNet mean/std on the 0-1 scale and rescales by 1/255 first
                    scale = 255.0 if max(vals) <= 1.0 else 1.0
                    kw[ours] = tuple(v * scale for v in vals)
        return cls(backbone=SwinConfig.from_hf_dict(bb), **kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Mask2FormerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
