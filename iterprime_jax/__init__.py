"""iterprime-jax: IteRPrimE zero-shot referring image segmentation in JAX/Flax."""

from .config import BlipConfig, IteRPrimEConfig, TextConfig, VisionConfig
from .convert import CheckpointError, convert_hf_checkpoint
from .loading import Model, load
from .modeling import encode_image, init_params, itm_logits, match_from_embeds
from .preprocess import preprocess_image, tokenize

__all__ = [
    "BlipConfig", "IteRPrimEConfig", "TextConfig", "VisionConfig", "CheckpointError",
    "convert_hf_checkpoint", "Model", "load", "encode_image", "init_params", "itm_logits",
    "match_from_embeds", "preprocess_image", "tokenize",
]
