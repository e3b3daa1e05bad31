"""HF checkpoint directory or ALBEF `.pth` -> converted checkpoint (orbax params + config +
tokenizer files), and reading converted params back.

`convert_hf_checkpoint` dispatches on the `model_type` of the HF `config.json` to the model's key
table (`blip`: `iterprime_jax.models.blip.convert`, `mask2former`:
`iterprime_jax.models.mask2former.convert`); tensors are read by
`iterprime_jax.models.checkpoint`. The converted directory holds `params/` (orbax) and the
model's config file (`blip_config.json` or `mask2former_config.json`), which tells `load` the
architecture.

`convert_albef_checkpoint` converts the IteRPrimE authors' `ALBEF.pth` (a file; PyTorch needed,
the `convert` extra; `iterprime_jax.models.albef.convert`): `albef_config.json`, params, the
bert-base-uncased `vocab.txt` (shipped with the package unless `vocab` is given) and a
`method.json` holding the authors' settings.

The destination is written as a whole: a converted checkpoint is built in a temporary sibling
folder and renamed into place, so it never holds a mix of two models nor a half-written one. A
destination that exists and is not empty is refused unless `overwrite=True` (CLI
`--overwrite`), which replaces that folder as a whole (everything in it is removed; nothing
else is touched).

The CLI is `iterprime_jax.models.convert` (`python -m iterprime_jax.models.convert SRC DST`);
this module holds the library functions, so that importing the package does not import the
CLI module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..shipped import VOCAB as SHIPPED_VOCAB
from ..types import Params
from .albef import convert as albef_convert
from .albef.config import ALBEF_CONFIG_NAME, AlbefConfig
from .blip.config import BlipConfig
from .blip.convert import convert_state_dict, read_hf_config
from .blip.modeling import abstract_params
from .checkpoint import CheckpointError, read_hf_state_dict
from .mask2former import convert as m2f_convert
from .mask2former.config import Mask2FormerConfig
from .mask2former.modeling import abstract_params as m2f_abstract_params

log = logging.getLogger(__name__)

CONFIG_NAME = "blip_config.json"
M2F_CONFIG_NAME = "mask2former_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "preprocessor_config.json")
#: HF `config.json` model_type values this package converts.
MODEL_TYPES = ("blip", "mask2former")

__all__ = ["ALBEF_CONFIG_NAME", "CONFIG_NAME", "M2F_CONFIG_NAME", "CheckpointError",
           "check_destination", "convert_albef_checkpoint", "convert_hf_checkpoint",
           "read_hf_state_dict", "restore_params", "save_params", "write_folder"]

AnyConfig = BlipConfig | Mask2FormerConfig


def config_file_name(config: AnyConfig) -> str:
    """The config file of a converted checkpoint of this architecture."""
    if isinstance(config, AlbefConfig):
        return ALBEF_CONFIG_NAME
    return M2F_CONFIG_NAME if isinstance(config, Mask2FormerConfig) else CONFIG_NAME


def _abstract_params(config: AnyConfig) -> Any:
    if isinstance(config, Mask2FormerConfig):
        return m2f_abstract_params(config)
    return abstract_params(config)


# --------------------------------------------------------------------------- destination
def check_destination(dst: str | Path, overwrite: bool = False) -> Path:
    """The destination folder of a conversion, checked before anything is read or written:
    it may be absent or an empty folder; a non-empty folder only with `overwrite`; a file
    never; its parent folder must be creatable and writable. CheckpointError (one line,
    naming it) otherwise."""
    dst = Path(dst)
    if str(dst).strip() == "":
        raise CheckpointError("the destination is an empty path; give the output folder")
    if dst.is_symlink() or dst.exists():
        if not dst.is_dir():
            raise CheckpointError(f"destination {dst} is a file, not a folder")
        if any(dst.iterdir()) and not overwrite:
            raise CheckpointError(f"destination {dst} is not empty; pass --overwrite "
                                  "(overwrite=True) to replace that folder as a whole")
    parent = dst.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"destination {dst}: cannot create its folder {parent} "
                              f"({e.strerror or type(e).__name__})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"destination {dst}: its folder {parent} is not writable")
    return dst


def write_folder(dst: str | Path, write: Callable[[Path], Any]) -> Path:
    """Build a folder with `write(tmp)` in a temporary sibling of `dst`, then rename it into
    place: `dst` holds either its old content or the complete new one, never a mix (an old
    `dst` is moved aside, then removed). A failure removes the temporary folder and leaves
    `dst` untouched. Call `check_destination` first."""
    dst = Path(dst).absolute()
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.is_symlink() or dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    return dst


# --------------------------------------------------------------------------- orbax save/load
def save_params(dst_dir: str | Path, params: Params, config: AnyConfig) -> Path:
    """Write `dst_dir/params` (orbax) and the config (`config_file_name(config)`)."""
    import orbax.checkpoint as ocp

    dst = Path(dst_dir).absolute()
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / PARAMS_DIR
    if target.exists():
        shutil.rmtree(target)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(target, jax.tree_util.tree_map(np.asarray, params))
    ckpt.wait_until_finished()
    config.replace(dtype=jnp.float32).save(dst / config_file_name(config))
    return dst


def restore_params(src_dir: str | Path, config: AnyConfig) -> Params:
    """Read orbax params from `src_dir/params`, checked against the config's tree: a tree or
    shape that differs from the config is reported as a mismatch, an unreadable file as
    damage (CheckpointError either way)."""
    import orbax.checkpoint as ocp

    path = Path(src_dir).absolute() / PARAMS_DIR
    if not path.exists():
        raise CheckpointError(f"no converted params at {path} (run python -m "
                              "iterprime_jax.models.convert on an HF checkpoint first)")
    if not path.is_dir() or not (path / "_METADATA").is_file():
        raise CheckpointError(f"params at {path} are damaged or incomplete (no orbax _METADATA "
                              "file: the conversion was interrupted or files were removed); "
                              "convert the checkpoint again")
    target = _abstract_params(config)
    ckpt = ocp.StandardCheckpointer()
    try:
        stored = ckpt.metadata(path).item_metadata
    except Exception as e:  # a missing or truncated metadata file
        raise CheckpointError(f"params at {path} are damaged (their metadata cannot be "
                              f"read): {_first_line(e)}") from e
    _check_tree(stored, target, path, config_file_name(config))
    try:
        params = ckpt.restore(path, target)
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


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        f = Path(src_dir) / name
        if f.exists():
            shutil.copy2(f, Path(dst_dir) / name)
            copied.append(name)
    return copied


def hf_model_type(src_dir: str | Path) -> str:
    """``model_type`` of an HF checkpoint's `config.json` (``blip`` when absent or unreadable:
    the model's reader then reports what is wrong with the file)."""
    try:
        hf = json.loads((Path(src_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "blip"
    return str(hf.get("model_type", "blip")) if isinstance(hf, dict) else "blip"


def convert_hf_checkpoint(src_dir: str | Path, dst_dir: str | Path,
                          config_overrides: Mapping[str, Any] | None = None,
                          overwrite: bool = False) -> Path:
    """Convert an HF checkpoint dir into `dst_dir` (orbax params, config, tokenizer).

    The model is chosen by `config.json`'s ``model_type`` (one of `MODEL_TYPES`; absent means
    ``blip``). `config_overrides` replace fields of the vision config (e.g. a non-square
    `image_size`). `dst_dir` must be absent or empty unless `overwrite` (then it is replaced
    as a whole); it is written at once (`write_folder`).
    """
    if Path(src_dir).is_file():
        raise CheckpointError(f"{src_dir} is a file, not a Hugging Face checkpoint directory; "
                              "an ALBEF .pth is converted by convert_albef_checkpoint")
    kind = hf_model_type(src_dir)
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{Path(src_dir) / 'config.json'}: model_type {kind!r} is not "
                              f"supported (supported: {', '.join(MODEL_TYPES)})")
    check_destination(dst_dir, overwrite)
    if kind == "mask2former":
        return _convert_mask2former(src_dir, dst_dir, config_overrides)
    config = read_hf_config(src_dir)
    if config_overrides:
        config = config.replace(vision=dataclasses.replace(config.vision, **config_overrides))
    state = read_hf_state_dict(src_dir)
    params = convert_state_dict(state, config)
    copied: list[str] = []
    dst = write_folder(dst_dir, lambda tmp: (save_params(tmp, params, config),
                                             copied.extend(copy_tokenizer_files(src_dir, tmp))))
    log.info("converted %d tensors from %s to %s (tokenizer files: %s)", len(state), src_dir,
             dst, copied or "none")
    return dst


def _convert_mask2former(src_dir: str | Path, dst_dir: str | Path,
                         config_overrides: Mapping[str, Any] | None) -> Path:
    """Mask2Former: orbax params + `mask2former_config.json` + preprocessor_config.json."""
    if config_overrides:
        raise CheckpointError(f"config_overrides {dict(config_overrides)} apply to BLIP only; "
                              f"{src_dir} is a Mask2Former checkpoint")
    config, params = m2f_convert.load_hf_checkpoint(src_dir)
    copied: list[str] = []  # preprocessor_config.json (mean/std)
    dst = write_folder(dst_dir, lambda tmp: (save_params(tmp, params, config),
                                             copied.extend(copy_tokenizer_files(src_dir, tmp))))
    log.info("converted Mask2Former %s to %s (%d queries, %d classes; copied: %s)", src_dir, dst,
             config.num_queries, config.num_labels, copied or "none")
    return dst


def _count_vocab(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as f:
            return sum(1 for _ in f)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read --vocab {path}: {e}") from None


def convert_albef_checkpoint(src: str | Path, dst_dir: str | Path,
                             bert_config: str | Path | None = None,
                             vocab: str | Path | None = None, image_res: int | None = None,
                             patch_size: int = 16, vision_width: int = 768,
                             vision_depth: int = 12, vision_heads: int = 12,
                             allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Convert the IteRPrimE authors' `ALBEF.pth` into `dst_dir`: orbax params,
    `albef_config.json`, `vocab.txt` (`vocab` or the shipped bert-base-uncased) and
    `method.json` (the authors' settings: layer 8, template on, no trailing [SEP],
    `authors_code`). Defaults are ALBEF-base at 256 px; `bert_config` is ALBEF's
    `config_bert.json` (defaults: its values). `image_res` other than the checkpoint's grid
    resizes `pos_embed`; None requires the checkpoint to be at 256 px.

    Every check runs before anything is written; the result appears in `dst_dir` at once (a
    temporary sibling is renamed, `write_folder`), so a failed conversion leaves nothing
    there. `dst_dir` must be absent or empty unless `overwrite` (then it is replaced as a
    whole).
    """
    src = Path(src)
    if src.is_dir():
        what = " (it holds config.json: a Hugging Face checkpoint)" \
            if (src / "config.json").exists() else ""
        raise CheckpointError(f"{src} is a directory{what}; an ALBEF checkpoint is a .pth file "
                              "(convert a Hugging Face directory without the ALBEF options)")
    if not src.exists():
        raise CheckpointError(f"ALBEF checkpoint {src} does not exist")
    vocab_path = Path(vocab) if vocab is not None else SHIPPED_VOCAB
    if not vocab_path.is_file():
        raise CheckpointError(f"--vocab {vocab_path} does not exist")
    check_destination(dst_dir, overwrite)
    state = albef_convert.model_state_dict(albef_convert.read_pth(src, allow_pickle), str(src))
    config, params = albef_convert.convert_albef_state_dict(
        state, str(src), bert_config, image_res, patch_size, vision_width, vision_depth,
        vision_heads)
    n_vocab = _count_vocab(vocab_path)
    if n_vocab > config.text.vocab_size:
        raise CheckpointError(f"--vocab {vocab_path} has {n_vocab} entries but {src} has "
                              f"{config.text.vocab_size} word embeddings")

    def write(tmp: Path) -> None:
        save_params(tmp, params, config)
        shutil.copy2(vocab_path, tmp / "vocab.txt")
        (tmp / "method.json").write_text(
            json.dumps(albef_convert.authors_method(config), indent=2) + "\n")

    dst = write_folder(dst_dir, write)
    log.info("converted ALBEF %s to %s (%d tensors kept of %d; %d px, %dx%d grid, fusion "
             "layer %d)", src, dst, sum(1 for k in state if not albef_convert.is_skipped(k)),
             len(state), config.vision.image_hw[0], *config.vision.grid,
             config.text.fusion_layer)
    return dst
