"""HF BLIP ITM checkpoint -> Flax params, saved with orbax; and loading it back.

The key table is mechanical because the Flax modules carry the PyTorch names:
`text_encoder.encoder.layer.3.crossattention.self.query.weight`
-> `text_encoder/encoder/layer_3/crossattention/self/query/kernel` (transposed).
Every checkpoint tensor must land on a Flax parameter of the same shape and every Flax parameter
must be filled: anything else is an error that names the key.

CLI: `python -m iterprime_jax.convert SRC_HF_DIR DST_DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from .config import BlipConfig
from .modeling import abstract_params

log = logging.getLogger(__name__)

CONFIG_NAME = "blip_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "preprocessor_config.json")
# Non-parameter buffers that some checkpoints carry; they have no Flax counterpart.
IGNORED_BUFFERS = ("text_encoder.embeddings.position_ids",)


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


# --------------------------------------------------------------------------- the key table
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


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: BlipConfig) -> dict:
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


# --------------------------------------------------------------------------- orbax save/load
def save_params(dst_dir: str | Path, params: Any, config: BlipConfig) -> Path:
    """Write `dst_dir/params` (orbax) and `dst_dir/blip_config.json`."""
    import orbax.checkpoint as ocp

    dst = Path(dst_dir).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / PARAMS_DIR
    if target.exists():
        shutil.rmtree(target)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(target, jax.tree_util.tree_map(np.asarray, params))
    ckpt.wait_until_finished()
    config.replace(dtype="float32").save(dst / CONFIG_NAME)
    return dst


def restore_params(src_dir: str | Path, config: BlipConfig) -> dict:
    """Read orbax params from `src_dir/params`, checked against the config's tree."""
    import orbax.checkpoint as ocp

    path = Path(src_dir).absolute() / PARAMS_DIR
    if not path.exists():
        raise CheckpointError(f"no converted params at {path} (run python -m "
                              "iterprime_jax.convert on an HF checkpoint first)")
    target = abstract_params(config)
    ckpt = ocp.StandardCheckpointer()
    try:
        params = ckpt.restore(path, target)
    except Exception as e:  # orbax raises several types for a tree/shape mismatch
        raise CheckpointError(f"params at {path} do not match {CONFIG_NAME}: {e}") from e
    return jax.tree_util.tree_map(np.asarray, params)


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        f = Path(src_dir) / name
        if f.exists():
            shutil.copy2(f, Path(dst_dir) / name)
            copied.append(name)
    return copied


def convert_hf_checkpoint(src_dir: str | Path, dst_dir: str | Path,
                          config_overrides: Mapping[str, Any] | None = None) -> Path:
    """Convert an HF BLIP ITM checkpoint dir into `dst_dir` (orbax params, config, tokenizer).

    `config_overrides` replace fields of the vision config (e.g. a non-square `image_size`).
    """
    config = read_hf_config(src_dir)
    if config_overrides:
        config = config.replace(vision=dataclasses.replace(config.vision, **config_overrides))
    state = read_hf_state_dict(src_dir)
    params = convert_state_dict(state, config)
    dst = save_params(dst_dir, params, config)
    copied = copy_tokenizer_files(src_dir, dst)
    log.info("converted %d tensors from %s to %s (tokenizer files: %s)", len(state), src_dir,
             dst, copied or "none")
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="HF checkpoint dir (config.json + model.safetensors)")
    ap.add_argument("dst", help="output dir (orbax params + blip_config.json + tokenizer)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        convert_hf_checkpoint(args.src, args.dst)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
