"""HF `Mask2FormerForUniversalSegmentation` state dict -> Flax params of this port.

The table is the shared one (`iterprime_jax.models.keytable.map_tensor`): module
path with `.N.` -> `_N`, Linear weights transposed, Conv2d (out, in, kh, kw) -> (kh, kw, in, out),
LayerNorm/GroupNorm weight -> scale, Embedding weight -> embedding, raw parameters
(`level_embed`, `relative_position_bias_table`, `in_proj_weight`) copied as they are.

Flax names follow the checkpoint files as published (and as transformers 5 still writes them
with `save_pretrained`). transformers 5 renames the Swin keys in memory (`swin.encoder...`,
`attention.q_proj`, `mlp.fc1`, ...); `canonical_key` maps those back, so both a checkpoint file
and `model.state_dict()` convert.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, read_hf_state_dict
from ..keytable import match_state_dict
from .config import Mask2FormerConfig
from .modeling import abstract_params

_BACKBONE = "model.pixel_level_module.encoder."
# transformers-5 in-memory Swin names -> checkpoint names (transformers' own mapping, reversed)
_RENAMES = (
    (re.compile(r"^(model\.pixel_level_module\.encoder\.)swin\.(embeddings|encoder)\."),
     r"\1\2."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.attention\.relative_position_bias\.relative_position_bias_table$"),
     ".attention.self.relative_position_bias_table"),
    (re.compile(r"(\.blocks\.\d+)\.mlp\.fc1\."), r"\1.intermediate.dense."),
    (re.compile(r"(\.blocks\.\d+)\.mlp\.fc2\."), r"\1.output.dense."),
)
# Tensors with no Flax counterpart: the loss's class weights, Swin's relative position index
# buffer (recomputed from the window size), SwinModel's final LayerNorm (unused by the backbone).
_IGNORED = (
    re.compile(r"^criterion\.empty_weight$"),
    re.compile(r"\.relative_position_index$"),
    re.compile(r"^model\.pixel_level_module\.encoder\.(swin\.)?layernorm\.(weight|bias)$"),
)


def canonical_key(key: str) -> str:
    """A state-dict key in the checkpoint-file naming (renames transformers-5 Swin keys)."""
    if key.startswith(_BACKBONE):
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
    return key


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: Mask2FormerConfig) -> dict:
    """Map an HF `Mask2FormerForUniversalSegmentation` state dict onto the Flax tree.

    Raises CheckpointError naming every unknown, missing or mis-shaped key.
    """
    kept = {k: v for k, v in state_dict.items()
            if not any(p.search(canonical_key(k)) for p in _IGNORED)}
    return match_state_dict(kept, abstract_params(config), "Mask2Former", canonical_key)


def read_hf_config(src_dir: str | Path) -> Mask2FormerConfig:
    """`Mask2FormerConfig` from an HF checkpoint dir (config.json, preprocessor_config.json)."""
    src = Path(src_dir)
    try:
        hf = json.loads((src / "config.json").read_text())
        pre_path = src / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text()) if pre_path.exists() else None
    except FileNotFoundError as e:
        raise CheckpointError(f"missing {e.filename}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"malformed JSON in {src}: {e}") from e
    try:
        return Mask2FormerConfig.from_hf_dict(hf, pre)
    except ValueError as e:
        raise CheckpointError(f"{src / 'config.json'}: {e}") from e


def load_hf_checkpoint(src_dir: str | Path,
                       config_overrides: Mapping[str, Any] | None = None
                       ) -> tuple[Mask2FormerConfig, dict]:
    """Config and converted Flax params of an HF Mask2Former checkpoint dir (no
    `config_overrides`: they apply to BLIP only, a CheckpointError otherwise)."""
    if config_overrides:
        raise CheckpointError(f"config_overrides {dict(config_overrides)} apply to BLIP only; "
                              f"{src_dir} is a Mask2Former checkpoint")
    config = read_hf_config(src_dir)
    return config, convert_state_dict(read_hf_state_dict(src_dir), config)
