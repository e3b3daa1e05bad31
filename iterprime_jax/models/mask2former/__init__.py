"""Flax port of Mask2Former with a Swin backbone (HF `Mask2FormerForUniversalSegmentation`)."""

from .config import Mask2FormerConfig, SwinConfig
from .modeling import abstract_params, init_params, mask2former_forward, mask2former_forward_jit

__all__ = ["Mask2FormerConfig", "SwinConfig", "abstract_params", "init_params",
           "mask2former_forward", "mask2former_forward_jit"]
