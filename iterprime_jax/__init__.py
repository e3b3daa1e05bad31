"""iterprime-jax: IteRPrimE zero-shot referring image segmentation in JAX/Flax."""

from .config import BlipConfig, IteRPrimEConfig, TextConfig, VisionConfig
from .convert import CheckpointError, convert_hf_checkpoint
from .gradcam import GradCAM, cross_attention_gradcam, gradcam_from_embeds
from .loading import Model, load, method_config
from .modeling import encode_image, init_params, itm_logits, match_from_embeds
from .pipeline import SegmentResult, segment, segment_batch, segment_images
from .preprocess import preprocess_image, tokenize
from .refine import IGRSResult, igrs

__all__ = [
    "BlipConfig", "IteRPrimEConfig", "TextConfig", "VisionConfig", "CheckpointError",
    "convert_hf_checkpoint", "GradCAM", "cross_attention_gradcam", "gradcam_from_embeds",
    "Model", "load", "method_config", "encode_image", "init_params", "itm_logits",
    "match_from_embeds",
    "SegmentResult", "segment", "segment_batch", "segment_images", "preprocess_image",
    "tokenize", "IGRSResult", "igrs",
]
