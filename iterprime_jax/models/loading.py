"""Loading a checkpoint: `load(dir or hub id)` -> `Model` (config, params, tokenizer); and the
method settings a checkpoint recommends (`method.json`, `METHOD_JSON`): `method_config` for the
library and `resolve_method`, the one resolver of every CLI (flags > method.json > defaults).

The directory's config file names the architecture: `blip_config.json` (BLIP ITM, with its
tokenizer), `albef_config.json` (ALBEF ITM, converted from `ALBEF.pth`, with `vocab.txt`) or
`mask2former_config.json` (the Mask2Former proposal network, no tokenizer).

A Hugging Face hub id ("Salesforce/blip-itm-base-coco") is fetched with
`huggingface_hub.snapshot_download` (online: downloaded into the HF cache; with
`HF_HUB_OFFLINE=1`: taken from it), converted once into our cache (`$ITERPRIME_CACHE`, default
`~/.cache/iterprime_jax`, as `<org>--<name>/<commit>`), then loaded from there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import IteRPrimEConfig, field_problem
from ..types import DType, Params
from .albef.config import ALBEF_CONFIG_NAME, AlbefConfig
from .blip.config import BlipConfig
from .checkpoint import CheckpointError, read_json_object
from .conversion import CONFIG_NAME, M2F_CONFIG_NAME, convert_hf_checkpoint, restore_params
from .mask2former.config import Mask2FormerConfig

CACHE_ENV = "ITERPRIME_CACHE"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHT_PATTERNS = (["*.json", "*.txt", "*.safetensors"], ["*.json", "*.txt", "*.bin"])


#: Matmul precisions a model may run at (`load(..., precision=)`), as
#: `jax.default_matmul_precision` names them. "highest": float32 products (several bf16 passes
#: on a TPU, no TF32 on a GPU): the numbers the parity tests check (1e-4 against PyTorch);
#: "high": about 3 bf16 passes on a TPU / TF32 on a GPU (faster, ~1e-3 relative);
#: "default": the backend's default, one bf16 pass on a TPU / TF32 on a GPU (fastest,
#: ~1e-2 relative: heat maps move, rarely a selection). On a CPU all three are float32.
MATMUL_PRECISIONS = ("highest", "high", "default")


def check_precision(precision: str, source: str = "precision") -> str:
    """`precision` if it is one of MATMUL_PRECISIONS, else a ValueError naming `source`."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"{source} must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    return precision


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded model (BLIP ITM or Mask2Former): pass `.params` and `.config` to the pure
    functions. `tokenizer` is None for Mask2Former. `precision`: the matmul precision the
    public functions (`segment*`, the evaluator, `Proposer`) trace under (MATMUL_PRECISIONS)."""

    config: BlipConfig | Mask2FormerConfig
    params: Params
    tokenizer: Any  # a transformers BertTokenizer (None for Mask2Former)
    path: Path
    precision: str = "highest"


def matmul_precision(model: Any) -> Any:
    """Context manager: `jax.default_matmul_precision` at the model's `precision` (a Model, or
    a precision name; "highest" for objects without one). It is part of the jit cache key:
    each precision has its own compilations."""
    import jax

    name = model if isinstance(model, str) else getattr(model, "precision", "highest")
    return jax.default_matmul_precision(check_precision(name, "Model.precision"))


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
    return any((path / n).exists() for n in (CONFIG_NAME, M2F_CONFIG_NAME, ALBEF_CONFIG_NAME))


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


def _read_config(cls: Any, path: Path) -> Any:
    """A converted checkpoint's config file -> `cls` (BlipConfig, AlbefConfig,
    Mask2FormerConfig); invalid JSON or fields are a CheckpointError naming the file."""
    fields = read_json_object(path, holds=f"a JSON object of {cls.__name__} fields")
    try:
        return cls.from_dict(fields)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid {cls.__name__} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); convert the "
                              "checkpoint again") from None


def load(path: str | Path, dtype: DType | str | None = None,
         revision: str | None = None, sharding: Any = None,
         precision: str = "highest") -> Model:
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
    if (path / M2F_CONFIG_NAME).exists():
        m2f = _read_config(Mask2FormerConfig, path / M2F_CONFIG_NAME)
        if dtype is not None:
            m2f = m2f.replace(dtype=dtype)
        return Model(config=m2f, params=place_params(restore_params(path, m2f), sharding),
                     tokenizer=None, path=path, precision=precision)
    arch = AlbefConfig if (path / ALBEF_CONFIG_NAME).exists() else BlipConfig
    cfg_path = path / (ALBEF_CONFIG_NAME if arch is AlbefConfig else CONFIG_NAME)
    if not cfg_path.exists():
        hint = " (an ALBEF .pth is converted with python -m iterprime_jax.models.convert)" \
            if any(path.glob("*.pth")) else ""
        raise CheckpointError(f"{cfg_path} (or {ALBEF_CONFIG_NAME}, {M2F_CONFIG_NAME}) missing: "
                              f"not a converted iterprime-jax checkpoint{hint}")
    config = _read_config(arch, cfg_path)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    params = place_params(restore_params(path, config), sharding)
    tokenizer = load_tokenizer(path)
    return Model(config=config, params=params, tokenizer=tokenizer, path=path,
                 precision=precision)


#: Per-checkpoint recommended `IteRPrimEConfig` fields (written by the training CLI).
METHOD_JSON = "method.json"


def read_method_json(path: str | Path) -> dict[str, Any]:
    """The `method.json` of a checkpoint directory (empty dict if absent): recommended
    `IteRPrimEConfig` fields, checked for unknown names and wrong types (CheckpointError)."""
    f = Path(path) / METHOD_JSON
    if not f.exists():
        return {}
    fields = read_json_object(f, holds="a JSON object of IteRPrimEConfig fields")
    known = {x.name for x in dataclasses.fields(IteRPrimEConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{f}: unknown IteRPrimEConfig fields {unknown}; known: "
                              f"{sorted(known)}")
    default = IteRPrimEConfig()
    for k, v in fields.items():
        want = type(getattr(default, k))
        ok = isinstance(v, want) or (want is float and isinstance(v, int))
        if not ok or (want is int and isinstance(v, bool)):
            raise CheckpointError(f"{f}: field {k!r} must be {want.__name__}, got {v!r}")
    return fields


def method_config(model: Model | str | Path, **overrides: Any) -> IteRPrimEConfig:
    """The method config recommended for a checkpoint: `IteRPrimEConfig()` updated with the
    fields of `method.json` in its directory (if present), then with `overrides`.

    Small models ship a `method.json` (e.g. the Grad-CAM layer of a 3-layer text encoder);
    the paper's defaults apply to the public BLIP checkpoints.
    """
    path = Path(model.path if isinstance(model, Model) else model)
    return IteRPrimEConfig(**{**read_method_json(path), **overrides})


def validate_method(method: IteRPrimEConfig, num_text_layers: int,
                    max_positions: int | None = None, source: str = "",
                    sources: Mapping[str, str] | None = None) -> None:
    """Clear errors (ValueError) for a setting out of its range or one the model cannot serve
    (Grad-CAM layer, text length); `sources` names where each field's value came from (else
    `source` for all of them)."""
    def where(name: str) -> str:
        s = (sources or {}).get(name, source)
        return f" (from {s})" if s else ""

    for f in dataclasses.fields(IteRPrimEConfig):
        problem = field_problem(f.name, getattr(method, f.name))
        if problem:
            raise ValueError(problem + where(f.name))
    if not 0 <= method.layer < num_text_layers:
        raise ValueError(f"Grad-CAM layer {method.layer} is out of range for a model with "
                         f"{num_text_layers} text layers{where('layer')}")
    if max_positions is not None and method.max_text_length > max_positions:
        raise ValueError(f"max_text_length {method.max_text_length} exceeds the model's "
                         f"{max_positions} text positions{where('max_text_length')}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_method(weights_dir: str | Path, num_text_layers: int,
                   overrides: Mapping[str, Any] | None = None,
                   max_positions: int | None = None) -> IteRPrimEConfig:
    """The method settings of a run, validated: `IteRPrimEConfig()` defaults (the Grad-CAM
    layer clipped to the model's last layer), then the weights' `method.json`, then
    `overrides` (the flags given on a command line, `cli_args.method_overrides`). An invalid
    value is reported with its source: the flag, the method.json file, or the default."""
    d = IteRPrimEConfig()
    rec = read_method_json(weights_dir)
    overrides = dict(overrides or {})
    fields = {"layer": min(d.layer, num_text_layers - 1), **rec, **overrides}
    sources = {f.name: (f"the flag {_flag(f.name)}" if f.name in overrides else
                        str(Path(weights_dir) / METHOD_JSON) if f.name in rec else "the default")
               for f in dataclasses.fields(IteRPrimEConfig)}
    for name, value in fields.items():  # before the config's own check, to name the source
        problem = field_problem(name, value)
        if problem:
            raise ValueError(f"{problem} (from {sources[name]})")
    method = d.replace(**fields)
    validate_method(method, num_text_layers, max_positions, sources=sources)
    return method
