"""The table of architectures: each model kind this package runs, declared once.

An `Architecture` names its config class, its Flax module (a builder `(config, delta_layer)
-> nn.Module` for the matching models), its parameter tree (`abstract_params`), its key table
(a source state dict -> that tree), the config file of a converted checkpoint (which tells
`load` the kind), its converter (a source checkpoint -> (config, params)), the Hugging Face
`model_type` it converts (None: not an HF directory), the method settings its conversion
recommends, and the type `load` returns (`Model` with a tokenizer, or `ProposerModel`).

Loading (`models.loading`), conversion (`models.conversion`, the `convert` CLI) and the
functional API (`models.blip.modeling`) look an architecture up here (`architecture_of` a
config, `for_hf_model_type`, `in_directory`) instead of testing types; adding a kind is one
entry in `ARCHITECTURES` (scenic's `ALL_MODELS`, HF Flax's `config_class` / `module_class`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..types import Params
from . import checkpoint
from .albef import convert as albef_convert
from .albef.config import AlbefConfig
from .albef.model import AlbefForITM
from .albef.model import abstract_params as albef_abstract_params
from .blip import convert as blip_convert
from .blip.config import BlipConfig
from .blip.itm import BlipForImageTextRetrieval
from .blip.itm import abstract_params as blip_abstract_params
from .checkpoint import CheckpointError
from .loaded import Model, ProposerModel
from .mask2former import convert as m2f_convert
from .mask2former import modeling as m2f_modeling
from .mask2former.config import Mask2FormerConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model kind.

    Attributes:
      name: its short name ("blip", "albef", "mask2former").
      config_class: the frozen config dataclass (`from_dict` / `save`).
      config_file: the config file of a converted checkpoint (names the kind to `load`).
      module: `(config, delta_layer=-1) -> nn.Module`, the Flax module.
      abstract_params: config -> the parameter tree's shapes/dtypes (no computation).
      key_table: (source state dict, config) -> Flax params (CheckpointError naming keys).
      convert: a source checkpoint -> (config, params): an HF directory and vision
        `config_overrides` when `hf_model_type` is set, else the kind's own file format.
      hf_model_type: the HF `config.json` `model_type` `convert` reads; None: not HF.
      model_type: what `load` returns (`Model` or `ProposerModel`).
      tokenizer: whether a converted directory holds a tokenizer (`Model.tokenizer`).
      method: config -> the `method.json` fields its conversion writes; None: none.
    """

    name: str
    config_class: type
    config_file: str
    module: Callable[..., Any]
    abstract_params: Callable[[Any], Params]
    key_table: Callable[[Mapping[str, Any], Any], Params]
    convert: Callable[..., tuple[Any, Params]]
    hf_model_type: str | None
    model_type: type
    tokenizer: bool
    method: Callable[[Any], dict[str, Any]] | None = None

    def save(self, dst_dir: str | Path, params: Params, config: Any) -> Path:
        """Write `dst_dir/params` (orbax) and the config file (float32)."""
        dst = checkpoint.save_params(dst_dir, params)
        checkpoint.write_config(config, dst / self.config_file)
        return dst

    def restore(self, src_dir: str | Path, config: Any) -> Params:
        """The orbax params of `src_dir`, checked against `config`'s tree."""
        return checkpoint.restore_params(src_dir, self.abstract_params(config),
                                         self.config_file)

    def read_config(self, directory: str | Path) -> Any:
        """The config file of a converted directory (CheckpointError naming it)."""
        return checkpoint.read_config(self.config_class, Path(directory) / self.config_file)


BLIP = Architecture(
    name="blip", config_class=BlipConfig, config_file="blip_config.json",
    module=BlipForImageTextRetrieval, abstract_params=blip_abstract_params,
    key_table=blip_convert.convert_state_dict, convert=blip_convert.load_hf_checkpoint,
    hf_model_type="blip", model_type=Model, tokenizer=True)

ALBEF = Architecture(
    name="albef", config_class=AlbefConfig, config_file="albef_config.json",
    module=AlbefForITM, abstract_params=albef_abstract_params,
    key_table=albef_convert.convert_state_dict,
    convert=albef_convert.read_albef_checkpoint, hf_model_type=None, model_type=Model,
    tokenizer=True, method=albef_convert.authors_method)

MASK2FORMER = Architecture(
    name="mask2former", config_class=Mask2FormerConfig, config_file="mask2former_config.json",
    module=lambda config, delta_layer=-1: m2f_modeling.Mask2FormerForUniversalSegmentation(
        config),
    abstract_params=m2f_modeling.abstract_params, key_table=m2f_convert.convert_state_dict,
    convert=m2f_convert.load_hf_checkpoint, hf_model_type="mask2former",
    model_type=ProposerModel, tokenizer=False)

#: Every architecture, in the order `in_directory` looks for their config files.
ARCHITECTURES: tuple[Architecture, ...] = (BLIP, ALBEF, MASK2FORMER)

_BY_CONFIG = {a.config_class: a for a in ARCHITECTURES}

#: HF `config.json` model_type values this package converts.
HF_MODEL_TYPES = tuple(a.hf_model_type for a in ARCHITECTURES if a.hf_model_type)

#: The config file names of converted checkpoints, in table order.
CONFIG_FILES = tuple(a.config_file for a in ARCHITECTURES)


def architecture_of(config: Any) -> Architecture:
    """The architecture whose config class `config` is (exactly: the table's key), else a
    TypeError naming the classes the table knows."""
    arch = _BY_CONFIG.get(type(config))
    if arch is None:
        raise TypeError(f"{type(config).__name__} is not a model config of this package "
                        f"(known: {', '.join(c.__name__ for c in _BY_CONFIG)})")
    return arch


def for_hf_model_type(kind: str, config_json: str | Path = "config.json") -> Architecture:
    """The architecture converting HF `model_type` `kind`; a CheckpointError naming
    `config_json` and the supported types otherwise."""
    for arch in ARCHITECTURES:
        if arch.hf_model_type == kind:
            return arch
    raise CheckpointError(f"{config_json}: model_type {kind!r} is not supported (supported: "
                          f"{', '.join(HF_MODEL_TYPES)})")


def in_directory(path: str | Path) -> Architecture | None:
    """The architecture of a converted directory: the first in the table whose config file it
    holds (None: none, not a converted checkpoint)."""
    for arch in ARCHITECTURES:
        if (Path(path) / arch.config_file).exists():
            return arch
    return None
