"""The mechanical PyTorch -> Flax key table shared by every model port.

Our Flax modules carry the PyTorch state-dict names, so one row maps any tensor:
`a.layer.3.b.weight` -> `a/layer_3/b/kernel`; Linear weights are transposed, Conv2d
(out, in, kh, kw) -> (kh, kw, in, out), LayerNorm/GroupNorm weight -> scale, Embedding weight ->
embedding, raw parameters copied as they are. `match_state_dict` fills a whole parameter tree
and reports every unknown, mis-shaped and missing key in one `CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..types import Params
from .checkpoint import CheckpointError

Path_ = tuple[str, ...]


def flax_prefix(torch_key: str) -> Path_:
    """`a.layers.3.b.weight` -> ('a', 'layers_3', 'b') (module path, leaf name dropped)."""
    out: list[str] = []
    for p in torch_key.split(".")[:-1]:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return tuple(out)


def flatten(tree: Mapping[str, Any], prefix: Path_ = ()) -> dict[Path_, Any]:
    """Nested dict -> {path tuple: leaf}."""
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def unflatten(flat: Mapping[Path_, Any]) -> dict:
    """{path tuple: leaf} -> nested dict."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def map_tensor(key: str, value: np.ndarray, targets: Mapping[Path_, Any]
               ) -> tuple[Path_, np.ndarray]:
    """One row of the table: torch key/tensor -> Flax path/array (layout converted)."""
    leaf = key.rsplit(".", 1)[-1]
    prefix = flax_prefix(key)
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
    return prefix + (leaf,), value  # raw nn.Parameter


def match_state_dict(state_dict: Mapping[str, Any], abstract: Params, model: str,
                     canonical: Callable[[str], str] = lambda k: k) -> dict:
    """Fill the tree shaped like `abstract` from `state_dict` (float32 numpy leaves).

    `canonical` renames a key before the table is applied (errors name the key as given).
    Raises CheckpointError naming every unknown, mis-shaped and missing key.
    """
    targets = flatten(abstract)
    out: dict[Path_, np.ndarray] = {}
    unknown, misshaped, bad_paths = [], [], set()
    for key, value in state_dict.items():
        value = np.asarray(value)
        try:
            path, arr = map_tensor(canonical(key), value, targets)
        except CheckpointError:
            path, arr = None, value
        if path not in targets:
            unknown.append(key)
            continue
        want = tuple(targets[path].shape)
        if tuple(arr.shape) != want:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)} -> {tuple(arr.shape)}, "
                             f"model expects {want} at {'/'.join(path)}")
            bad_paths.add(path)
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
        raise CheckpointError(f"{model} checkpoint does not match the model config:\n  "
                              + "\n  ".join(problems))
    return unflatten(out)
