"""Loading a checkpoint: `load(dir or hub id)` -> the model type its architecture declares
(`Model`: config, params, tokenizer, for BLIP / ALBEF ITM; `ProposerModel` for Mask2Former).

The directory's config file names the architecture (`architectures.in_directory`: the table's
config files in order, `blip_config.json`, `albef_config.json`, `mask2former_config.json`);
its params are read by `models.checkpoint` through the architecture (`Architecture.restore`).

A Hugging Face hub id ("Salesforce/blip-itm-base-coco") is fetched with
`huggingface_hub.snapshot_download` (online: downloaded into the HF cache; with
`HF_HUB_OFFLINE=1`: taken from it), converted once into our cache (`$ITERPRIME_CACHE`, default
`~/.cache/iterprime_jax`, as `<org>--<name>/<commit>`), then loaded from there.

The method settings a checkpoint recommends (`method.json`) are the method layer's
(`iterprime_jax.method.settings`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..types import DType
from .architectures import CONFIG_FILES, in_directory
from .checkpoint import CheckpointError
from .conversion import convert_hf_checkpoint
from .loaded import (  # noqa: F401 - re-exported: what load returns and its precision
    MATMUL_PRECISIONS,
    ItmConfig,
    Model,
    ProposerModel,
    check_precision,
    matmul_precision,
)

CACHE_ENV = "ITERPRIME_CACHE"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHT_PATTERNS = (["*.json", "*.txt", "*.safetensors"], ["*.json", "*.txt", "*.bin"])


def load_tokenizer(path: str | Path) -> Any:
    """BertTokenizer from a checkpoint dir: `tokenizer.json` / `tokenizer_config.json` as
    transformers 5 saves them, or a bare `vocab.txt` (read with the vocab-file constructor: the
    fast tokenizer built from a bare vocab file maps every word to [UNK] in transformers 5)."""
    from transformers import BertTokenizer

    path = Path(path)
    has_vocab = (path / "vocab.txt").exists()
    has_json = (path / "tokenizer.json").exists()
    if has_json or (has_vocab and (path / "tokenizer_config.json").exists()):
        return BertTokenizer.from_pretrained(str(path))
    if has_vocab:
        return BertTokenizer(str(path / "vocab.txt"), do_lower_case=True)
    raise CheckpointError(f"no tokenizer in {path}: need tokenizer.json (transformers 5) or "
                          "vocab.txt")


def cache_dir() -> Path:
    """Where hub checkpoints are converted to: `$ITERPRIME_CACHE` or ~/.cache/iterprime_jax."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "iterprime_jax"


def is_hub_id(name: str | Path) -> bool:
    """"org/name" that is not an existing path."""
    return (isinstance(name, str) and _HUB_ID.fullmatch(name) is not None
            and not Path(name).exists())


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    snap = None
    for patterns in _WEIGHT_PATTERNS:  # safetensors if the repo has them, else .bin
        try:
            snap = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001 - huggingface_hub raises many kinds
            raise CheckpointError(
                f"{repo_id!r} is not a directory, and fetching it as a model from the Hugging "
                f"Face hub{' cache (HF_HUB_OFFLINE=1)' if offline else ''} failed: "
                f"{type(e).__name__}: {e}") from None
        if any(snap.glob("*.safetensors")) or any(snap.glob("*.bin")):
            return snap
    raise CheckpointError(f"hub repo {repo_id!r} ({snap}) has no .safetensors or .bin weights")


def _is_converted(path: Path) -> bool:
    return in_directory(path) is not None


def resolve_hub_id(repo_id: str, revision: str | None = None) -> Path:
    """A hub id -> our converted directory (converted on first use, then reused)."""
    snap = _snapshot(repo_id, revision)
    dst = cache_dir() / repo_id.replace("/", "--") / snap.name
    if _is_converted(dst):
        return dst
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_hf_checkpoint(snap, tmp)
    if _is_converted(dst):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    return dst


def load(path: str | Path, dtype: DType | str | None = None,
         revision: str | None = None, sharding: Any = None,
         precision: str = "highest") -> Model | ProposerModel:
    """Load a directory written by `convert_hf_checkpoint` (or the shipped small model), or a
    Hugging Face hub id such as "Salesforce/blip-itm-base-coco" (fetched and converted once,
    see the module docstring; `revision`: a branch, tag or commit of the hub repo).

    `dtype` overrides the compute dtype (``jnp.bfloat16`` or its name); parameters stay
    float32. The parameters are placed on the devices once (`placement.place_params`):
    `sharding` is a `jax.sharding.Mesh` (replicated over it), a replicated `Sharding` or a
    `jax.Device`; default: the first local device. The public functions then use them there
    without copies. `precision`: the matmul precision ("highest" | "high" | "default", see
    MATMUL_PRECISIONS for what each costs and changes).
    """
    from ..placement import place_params

    check_precision(precision)
    try:
        place_params({}, sharding)  # check `sharding` before reading any file
    except ValueError as e:
        raise ValueError(f"load({str(path)!r}): {e}") from None
    if str(path).strip() == "":
        raise CheckpointError("load: the weights path is empty; give a converted checkpoint "
                              "directory or a hub id")
    if is_hub_id(path):
        path = resolve_hub_id(str(path), revision)
    path = Path(path)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; load takes a converted directory (convert an "
                              "ALBEF .pth first: python -m iterprime_jax.models.convert "
                              f"{path} DST)")
    if not path.is_dir():
        raise CheckpointError(f"weights directory {path} does not exist")
    arch = in_directory(path)
    if arch is None:
        first, *others = CONFIG_FILES
        hint = " (an ALBEF .pth is converted with python -m iterprime_jax.models.convert)" \
            if any(path.glob("*.pth")) else ""
        raise CheckpointError(f"{path / first} (or {', '.join(others)}) missing: "
                              f"not a converted iterprime-jax checkpoint{hint}")
    config = arch.read_config(path)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    params = place_params(arch.restore(path, config), sharding)
    extra = {"tokenizer": load_tokenizer(path)} if arch.tokenizer else {}
    return arch.model_type(config=config, params=params, path=path, precision=precision,
                           **extra)
