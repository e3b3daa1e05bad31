"""Source checkpoint -> converted checkpoint directory (orbax params + config file + tokenizer
files [+ method.json]), on top of the checkpoint module and the architecture table.

`convert_hf_checkpoint` reads the `model_type` of an HF `config.json` and converts with the
architecture that declares it (`architectures.for_hf_model_type`: BLIP ITM, Mask2Former);
`convert_albef_checkpoint` converts the IteRPrimE authors' `ALBEF.pth` (a file; PyTorch
needed, the `convert` extra): `albef_config.json`, params, the bert-base-uncased `vocab.txt`
(shipped with the package unless `vocab` is given) and a `method.json` holding the authors'
settings (`method.settings.write_method_json`). Files are read and written by
`iterprime_jax.models.checkpoint`; the architecture's config file tells `load` the kind.

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

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..method.settings import write_method_json
from ..shipped import VOCAB as SHIPPED_VOCAB
from ..types import Params
from .architectures import ALBEF, architecture_of, for_hf_model_type
from .checkpoint import CheckpointError, read_hf_state_dict

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "preprocessor_config.json")

__all__ = ["CheckpointError", "check_destination", "convert_albef_checkpoint",
           "convert_hf_checkpoint", "read_hf_state_dict", "restore_params", "save_params",
           "write_folder"]


def save_params(dst_dir: str | Path, params: Params, config: Any) -> Path:
    """Write `dst_dir/params` (orbax) and the config file of `config`'s architecture."""
    return architecture_of(config).save(dst_dir, params, config)


def restore_params(src_dir: str | Path, config: Any) -> Params:
    """The orbax params of a converted directory, checked against `config`'s tree
    (`Architecture.restore`; CheckpointError for a mismatch or damage)."""
    return architecture_of(config).restore(src_dir, config)


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

    The architecture is the one declaring `config.json`'s ``model_type`` (one of
    `architectures.HF_MODEL_TYPES`; absent means ``blip``). `config_overrides` replace fields
    of the vision config (e.g. a non-square `image_size`; BLIP only). `dst_dir` must be absent
    or empty unless `overwrite` (then it is replaced as a whole); it is written at once
    (`write_folder`).
    """
    if Path(src_dir).is_file():
        raise CheckpointError(f"{src_dir} is a file, not a Hugging Face checkpoint directory; "
                              "an ALBEF .pth is converted by convert_albef_checkpoint")
    arch = for_hf_model_type(hf_model_type(src_dir), Path(src_dir) / "config.json")
    check_destination(dst_dir, overwrite)
    config, params = arch.convert(src_dir, config_overrides)
    copied: list[str] = []
    dst = write_folder(dst_dir, lambda tmp: (arch.save(tmp, params, config),
                                             copied.extend(copy_tokenizer_files(src_dir, tmp))))
    log.info("converted %s %s to %s (copied: %s)", arch.name, src_dir, dst, copied or "none")
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
    config, params = ALBEF.convert(src, bert_config, image_res, patch_size, vision_width,
                                   vision_depth, vision_heads, allow_pickle)
    n_vocab = _count_vocab(vocab_path)
    if n_vocab > config.text.vocab_size:
        raise CheckpointError(f"--vocab {vocab_path} has {n_vocab} entries but {src} has "
                              f"{config.text.vocab_size} word embeddings")

    def write(tmp: Path) -> None:
        ALBEF.save(tmp, params, config)
        shutil.copy2(vocab_path, tmp / "vocab.txt")
        write_method_json(tmp, ALBEF.method(config))

    dst = write_folder(dst_dir, write)
    log.info("converted ALBEF %s to %s (%d px, %dx%d grid, fusion layer %d)", src, dst,
             config.vision.image_hw[0], *config.vision.grid, config.text.fusion_layer)
    return dst
