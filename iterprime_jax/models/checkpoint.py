"""Every read and write of checkpoint files, model-independent: tensors of a source
checkpoint into numpy (safetensors, single file or sharded, through the `safetensors`
package; with torch installed, a PyTorch `.bin`), a converted checkpoint's orbax params
(`save_params` / `restore_params`, checked against the model's tree) and its config file
(`read_config` / `write_config`); and `CheckpointError`, the error of every checkpoint problem.

The architecture table (`iterprime_jax.models.architectures`) says which config class, file
and parameter tree a directory holds; the per-model key tables map what is read here onto a
Flax parameter tree. Conversion (`models.conversion`) and loading (`models.loading`) read and
write through this module only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: The orbax params folder of a converted checkpoint.
PARAMS_DIR = "params"


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


# --------------------------------------------------------------------------- config files
def read_config(cls: Any, path: Path) -> Any:
    """A converted checkpoint's config file -> `cls` (its `from_dict`); invalid JSON or fields
    are a CheckpointError naming the file."""
    fields = read_json_object(path, holds=f"a JSON object of {cls.__name__} fields")
    try:
        return cls.from_dict(fields)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid {cls.__name__} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); convert the "
                              "checkpoint again") from None


def write_config(config: Any, path: Path) -> None:
    """`config` as float32 (parameters are stored float32; a compute dtype is chosen at load
    time) into the JSON file `path`."""
    import jax.numpy as jnp

    config.replace(dtype=jnp.float32).save(path)


# --------------------------------------------------------------------------- orbax params
def save_params(dst_dir: str | Path, params: Any) -> Path:
    """Write `params` (a tree of arrays) as orbax into `dst_dir/params` (replaced if present);
    returns `dst_dir`."""
    import jax
    import orbax.checkpoint as ocp

    dst = Path(dst_dir).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / PARAMS_DIR
    if target.exists():
        shutil.rmtree(target)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(target, jax.tree_util.tree_map(np.asarray, params))
    ckpt.wait_until_finished()
    return dst


def restore_params(src_dir: str | Path, abstract: Any, config_name: str) -> Any:
    """Read orbax params from `src_dir/params`, checked against `abstract` (the model's tree
    of shapes, from the config in `config_name`): a tree or shape that differs is reported as
    a mismatch with `config_name`, an unreadable file as damage (CheckpointError either
    way). Numpy leaves."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(src_dir).absolute() / PARAMS_DIR
    if not path.exists():
        raise CheckpointError(f"no converted params at {path} (run python -m "
                              "iterprime_jax.models.convert on an HF checkpoint first)")
    if not path.is_dir() or not (path / "_METADATA").is_file():
        raise CheckpointError(f"params at {path} are damaged or incomplete (no orbax _METADATA "
                              "file: the conversion was interrupted or files were removed); "
                              "convert the checkpoint again")
    ckpt = ocp.StandardCheckpointer()
    try:
        stored = ckpt.metadata(path).item_metadata
    except Exception as e:  # a missing or truncated metadata file
        raise CheckpointError(f"params at {path} are damaged (their metadata cannot be "
                              f"read): {_first_line(e)}") from e
    _check_tree(stored, abstract, path, config_name)
    try:
        params = ckpt.restore(path, abstract)
    except Exception as e:  # orbax raises several types for an unreadable array
        _quiet_closed_loop_callbacks()
        raise CheckpointError(f"params at {path} are damaged (an array file is truncated or "
                              f"unreadable; convert the checkpoint again): {_first_line(e)}"
                              ) from e
    return jax.tree_util.tree_map(np.asarray, params)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _check_tree(stored: Any, target: Any, path: Path, config_name: str) -> None:
    """CheckpointError naming the first array the stored params and the config disagree on."""
    import jax

    def shapes(tree: Any) -> dict[str, tuple[int, ...]]:
        return {jax.tree_util.keystr(k): tuple(getattr(v, "shape", ()) or ())
                for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, want = shapes(stored), shapes(target)
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [k for k in sorted(set(want) & set(have)) if want[k] != have[k]]
    if missing or extra or wrong:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                else f"{wrong[0]} has shape {have[wrong[0]]}, the config wants {want[wrong[0]]}")
        raise CheckpointError(f"params at {path} do not match {config_name}: {what}")


def _quiet_closed_loop_callbacks() -> None:
    """After a failed restore, tensorstore reads still in flight finish on orbax's closed event
    loop and each reports ``RuntimeError: Event loop is closed`` through
    `sys.unraisablehook` (a traceback per read, after the real error). Drop exactly those;
    every other unraisable exception still reaches the previous hook. Installed only on this
    failure path."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(u: Any) -> None:
        if not (isinstance(u.exc_value, RuntimeError)
                and str(u.exc_value) == "Event loop is closed"):
            previous(u)

    hook._drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
