"""iterprime-jax: IteRPrimE zero-shot referring image segmentation in JAX/Flax.

The public API (`__all__`): what a user calls. `load` a converted checkpoint; `segment`,
`segment_batch`, `segment_images` with the model's own method (`method_config`) or an
`IteRPrimEConfig`; Mask2Former proposals with `propose` / `Proposer`; the pure functions the
README lists for your own JAX code; the model configs. Everything else is imported from its
module (conversion: `iterprime_jax.models.conversion`; parameters: `models.blip.modeling`;
evaluation: `iterprime_jax.evaluation`). ShapesRef and the small model's training are a
project of their own beside the library (the package `shapesref`), which the library never
imports.
"""

from .config import IteRPrimEConfig
from .method.gradcam import GradCAM, cross_attention_gradcam, gradcam_from_embeds
from .method.heat import resize_heatmap
from .method.pipeline import SegmentResult, segment, segment_batch, segment_images
from .method.refine import IGRSResult, igrs
from .method.settings import method_config
from .models.albef.config import AlbefConfig
from .models.blip.config import BlipConfig, TextConfig, VisionConfig
from .models.blip.modeling import encode_image, itm_logits
from .models.blip.preprocess import preprocess_image, tokenize
from .models.checkpoint import CheckpointError
from .models.loading import Model, ProposerModel, load
from .models.mask2former import Mask2FormerConfig
from .models.mask2former.preprocess import ProposeConfig
from .models.mask2former.propose import Proposer, propose

__all__ = [
    # load a converted checkpoint (or a hub id) and what it returns
    "load", "Model", "ProposerModel", "CheckpointError",
    # the method
    "segment", "segment_batch", "segment_images", "SegmentResult", "method_config",
    "IteRPrimEConfig",
    # proposals
    "propose", "Proposer", "ProposeConfig",
    # pure functions for your own JAX code (the README's list)
    "itm_logits", "encode_image", "cross_attention_gradcam", "gradcam_from_embeds", "GradCAM",
    "igrs", "IGRSResult", "resize_heatmap", "preprocess_image", "tokenize",
    # model configs
    "BlipConfig", "TextConfig", "VisionConfig", "AlbefConfig", "Mask2FormerConfig",
]
