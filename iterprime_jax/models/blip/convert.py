"""The BLIP key table: an HF `BlipForImageTextRetrieval` state dict -> the Flax parameter tree.

The table is mechanical because the Flax modules carry the PyTorch names:
`text_encoder.encoder.layer.3.crossattention.self.query.weight`
-> `text_encoder/encoder/layer_3/crossattention/self/query/kernel` (transposed).
Every checkpoint tensor must land on a Flax parameter of the same shape and every Flax parameter
must be filled: anything else is a `CheckpointError` that names the key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...types import Params
from ..checkpoint import CheckpointError, read_hf_state_dict
from ..keytable import match_state_dict
from .config import BlipConfig
from .itm import abstract_params

# Non-parameter buffers that some checkpoints carry; they have no Flax counterpart.
IGNORED_BUFFERS = ("text_encoder.embeddings.position_ids",)


def read_hf_config(src_dir: str | Path) -> BlipConfig:
    src = Path(src_dir)
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"missing {cfg_path}")
    try:
        hf = json.loads(cfg_path.read_text())
        pre_path = src / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text()) if pre_path.exists() else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"malformed JSON in {src}: {e}") from e
    return BlipConfig.from_hf_dict(hf, pre)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: BlipConfig) -> Params:
    """Map an HF `BlipForImageTextRetrieval` state dict onto the Flax parameter tree.

    Raises CheckpointError naming every unknown, missing or mis-shaped key.
    """
    kept = {k: v for k, v in state_dict.items() if k not in IGNORED_BUFFERS}
    return match_state_dict(kept, abstract_params(config), "BLIP")


def load_hf_checkpoint(src_dir: str | Path, config_overrides: Mapping[str, Any] | None = None
                       ) -> tuple[BlipConfig, Params]:
    """Config and converted Flax params of an HF BLIP ITM checkpoint dir; `config_overrides`
    replace fields of the vision config (e.g. a non-square `image_size`)."""
    config = read_hf_config(src_dir)
    if config_overrides:
        config = config.replace(vision=dataclasses.replace(config.vision, **config_overrides))
    return config, convert_state_dict(read_hf_state_dict(src_dir), config)
