"""Reading checkpoint tensors into numpy: safetensors (single file or sharded, through the
`safetensors` package) and, with torch installed, a PyTorch `.bin`; and `CheckpointError`,
the error of every checkpoint problem.

Model-independent: the per-model key tables (`iterprime_jax.models.blip.convert`) map what is
read here onto a Flax parameter tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint directory or tensor does not match the model."""


def read_json_object(path: str | Path, name: str | None = None,
                     holds: str = "a JSON object") -> dict:
    """The JSON object in `path`; an unreadable file, malformed JSON or another JSON value is a
    CheckpointError naming the file as `name` (default: the path) and what it must hold."""
    name = str(path) if name is None else name
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {name}: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{name} must hold {holds}")
    return value


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a `.safetensors` file into numpy arrays with the `safetensors` package's numpy
    backend (no torch; bf16 tensors come back as `ml_dtypes.bfloat16` arrays)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e


def read_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """Read `pytorch_model.bin` (needs torch, a conversion-time tool only)."""
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path} is a PyTorch pickle; reading it needs torch "
                              "(pip install torch==2.13.0), or provide model.safetensors") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in sd.items()}


def read_hf_state_dict(src_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint dir (single or sharded safetensors, or a torch .bin)."""
    src = Path(src_dir)
    if not src.is_dir():
        raise CheckpointError(f"checkpoint directory {src} does not exist")
    if (src / "model.safetensors").exists():
        return read_safetensors(src / "model.safetensors")
    index = src / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(read_safetensors(src / shard))
        return out
    if (src / "pytorch_model.bin").exists():
        return read_torch_bin(src / "pytorch_model.bin")
    raise CheckpointError(f"no weights in {src}: expected model.safetensors, "
                          "model.safetensors.index.json or pytorch_model.bin")
