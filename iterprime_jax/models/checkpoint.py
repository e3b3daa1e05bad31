"""Reading checkpoint tensors into numpy: safetensors (single file or sharded) and, with torch
installed, a PyTorch `.bin`; and `CheckpointError`, the error of every checkpoint problem.

Model-independent: the per-model key tables (`iterprime_jax.models.blip.convert`) map what is
read here onto a Flax parameter tree.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint directory or tensor does not match the model."""


# --------------------------------------------------------------------------- reading tensors
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a `.safetensors` file into numpy arrays (no torch; bf16 via ml_dtypes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
        out[key] = arr
    return out


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
