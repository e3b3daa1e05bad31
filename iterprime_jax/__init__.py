"""iterprime-jax: IteRPrimE zero-shot referring image segmentation in JAX/Flax.

The public API, re-exported: the models (`models`: BLIP and ALBEF ITM configs, parameters,
conversion, loading; the Mask2Former proposal network's config, forward pass and `propose`), the
method (`method`: Grad-CAM, IGRS, `segment`) and the method's switches (`IteRPrimEConfig`).
Evaluation is a subpackage; ShapesRef and the small model's training are a project of their
own beside the library (the package `shapesref`), which the library never imports.
"""

from .config import IteRPrimEConfig
from .method.gradcam import GradCAM, cross_attention_gradcam, gradcam_from_embeds
from .method.heat import resize_heatmap
from .method.pipeline import SegmentResult, segment, segment_batch, segment_images
from .method.refine import IGRSResult, igrs
from .method.settings import method_config
from .models.albef.config import AlbefConfig
from .models.blip.config import BlipConfig, TextConfig, VisionConfig
from .models.blip.modeling import encode_image, init_params, itm_logits, match_from_embeds
from .models.blip.preprocess import preprocess_image, tokenize
from .models.checkpoint import CheckpointError
from .models.conversion import convert_albef_checkpoint, convert_hf_checkpoint
from .models.loading import Model, ProposerModel, load
from .models.mask2former import Mask2FormerConfig, mask2former_forward
from .models.mask2former.preprocess import ProposeConfig
from .models.mask2former.propose import Proposer, propose

__all__ = [
    "BlipConfig", "IteRPrimEConfig", "TextConfig", "VisionConfig", "CheckpointError",
    "convert_hf_checkpoint", "AlbefConfig", "convert_albef_checkpoint", "GradCAM",
    "cross_attention_gradcam", "gradcam_from_embeds",
    "Model", "ProposerModel", "load", "method_config", "encode_image", "init_params", "itm_logits",
    "match_from_embeds",
    "SegmentResult", "segment", "segment_batch", "segment_images", "preprocess_image",
    "tokenize", "IGRSResult", "igrs", "resize_heatmap", "Mask2FormerConfig",
    "mask2former_forward", "ProposeConfig", "Proposer", "propose",
]
