"""The BLIP key table: an HF `BlipForImageTextRetrieval` state dict -> the Flax parameter tree.

The table is mechanical because the Flax modules carry the PyTorch names:
`text_encoder.encoder.layer.3.crossattention.self.query.weight`
-> `text_encoder/encoder/layer_3/crossattention/self/query/kernel` (transposed).
Every checkpoint tensor must land on a Flax parameter of the same shape and every Flax parameter
must be filled: anything else is a `CheckpointError` that names the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...types import Params
from ..checkpoint import CheckpointError
from .config import BlipConfig
from .modeling import abstract_params

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



def _flax_prefix(torch_key: str) -> tuple[str, ...]:
    """`a.layers.3.b.weight` -> ('a', 'layers_3', 'b') (module path, leaf name dropped)."""
    parts = torch_key.split(".")[:-1]
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _map_tensor(key: str, value: np.ndarray, targets: Mapping[tuple[str, ...], Any]
                ) -> tuple[tuple[str, ...], np.ndarray]:
    """One row of the table: torch key/tensor -> flax path/array (layout converted)."""
    leaf = key.rsplit(".", 1)[-1]
    prefix = _flax_prefix(key)
    if leaf == "bias":
        return prefix + ("bias",), value
    if leaf == "weight":
        if prefix + ("kernel",) in targets:
            if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
                return prefix + ("kernel",), value.T
            if value.ndim == 4:  # Conv2d (out, in, kh, kw) -> Conv (kh, kw, in, out)
                return prefix + ("kernel",), value.transpose(2, 3, 1, 0)
        if prefix + ("scale",) in targets:
            return prefix + ("scale",), value
        if prefix + ("embedding",) in targets:
            return prefix + ("embedding",), value
        raise CheckpointError(f"checkpoint key {key!r} has no Flax parameter under "
                              f"{'/'.join(prefix)}")
    # raw nn.Parameter (class_embedding, position_embedding)
    return prefix + (leaf,), value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: BlipConfig) -> Params:
    """Map an HF `BlipForImageTextRetrieval` state dict onto the Flax parameter tree.

    Raises CheckpointError naming every unknown, missing or mis-shaped key.
    """
    targets = _flatten(abstract_params(config))
    out: dict[tuple[str, ...], np.ndarray] = {}
    unknown, misshaped, bad_paths = [], [], set()
    for key, value in state_dict.items():
        if key in IGNORED_BUFFERS:
            continue
        try:
            path, arr = _map_tensor(key, np.asarray(value), targets)
        except CheckpointError:
            unknown.append(key)
            continue
        if path not in targets:
            unknown.append(key)
            continue
        want = tuple(targets[path].shape)
        if tuple(arr.shape) != want:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)} -> {tuple(arr.shape)}, "
                             f"model expects {want} at {'/'.join(path)}")
            continue
        out[path] = np.asarray(arr, dtype=np.float32)
    missing = ["/".join(p) for p in targets if p not in out and p not in bad_paths]
    problems = []
    if unknown:
        problems.append(f"unknown checkpoint keys: {sorted(unknown)}")
    if misshaped:
        problems.append("mis-shaped tensors: " + "; ".join(misshaped))
    if missing:
        problems.append(f"model parameters missing from the checkpoint: {missing}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config:\n  "
                              + "\n  ".join(problems))
    return _unflatten(out)
