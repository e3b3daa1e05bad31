"""CLI: HF checkpoint directory or ALBEF `.pth` -> converted checkpoint (orbax params + config +
tokenizer files); the library functions are in `iterprime_jax.models.conversion` (re-exported
here).

`python -m iterprime_jax.models.convert SRC_HF_DIR DST_DIR [--overwrite]` or
`python -m iterprime_jax.models.convert ALBEF.pth DST_DIR [--overwrite] [--bert-config
config_bert.json] [--vocab vocab.txt] [--image-res 256] [--patch-size 16] [--vision-width 768]
[--vision-depth 12] [--vision-heads 12]`.

DST must be absent or an empty folder; `--overwrite` replaces a non-empty one as a whole (the
new checkpoint is written beside it and renamed into place: DST never holds a mix of two
models, and nothing outside DST is touched). Errors are one line (exit status 1); Ctrl-C is
one line "interrupted" (exit status 130).

Nothing in the package imports this module (it would be imported twice under ``python -m``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .architectures import CONFIG_FILES, HF_MODEL_TYPES  # noqa: F401 - re-exported
from .checkpoint import CheckpointError, read_hf_state_dict
from .conversion import (  # noqa: F401 - re-exported: the library API, under its old name
    TOKENIZER_FILES,
    check_destination,
    convert_albef_checkpoint,
    convert_hf_checkpoint,
    copy_tokenizer_files,
    hf_model_type,
    restore_params,
    save_params,
    write_folder,
)

__all__ = ["CheckpointError", "convert_albef_checkpoint", "convert_hf_checkpoint", "main",
           "read_hf_state_dict", "restore_params", "save_params"]

#: The ALBEF-only options of the CLI (their argparse dests), refused for a directory.
_ALBEF_FLAGS = ("bert_config", "vocab", "image_res", "patch_size", "vision_width",
                "vision_depth", "vision_heads")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m iterprime_jax.models.convert",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="HF checkpoint dir (config.json + model.safetensors), or an "
                                "ALBEF .pth file")
    ap.add_argument("dst", help="output dir (orbax params + model config [+ tokenizer])")
    g = ap.add_argument_group("ALBEF .pth only")
    g.add_argument("--bert-config", help="ALBEF's config_bert.json (default: its values)")
    g.add_argument("--vocab", help="WordPiece vocab.txt (default: the shipped "
                                   "bert-base-uncased vocabulary)")
    g.add_argument("--image-res", type=int, help="input size in px (default: 256, the "
                   "authors'); differing from the checkpoint's grid resizes pos_embed")
    g.add_argument("--patch-size", type=int, help="ViT patch size (default 16)")
    g.add_argument("--vision-width", type=int, help="ViT width (default 768)")
    g.add_argument("--vision-depth", type=int, help="ViT blocks (default 12)")
    g.add_argument("--vision-heads", type=int, help="ViT heads (default 12)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace DST if it is a non-empty folder (the whole folder is "
                         "replaced by the new checkpoint; without it a non-empty DST is "
                         "refused)")
    g.add_argument("--allow-pickle", action="store_true",
                   help="let torch.load unpickle non-tensor objects (trusted files only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if not Path(args.src).exists():
            raise CheckpointError(f"{args.src} does not exist (expected a Hugging Face "
                                  "checkpoint directory or an ALBEF .pth file)")
        if Path(args.src).is_dir():
            given = [f"--{k.replace('_', '-')}" for k in _ALBEF_FLAGS
                     if getattr(args, k) is not None]
            if given:
                raise CheckpointError(f"{args.src} is a directory (a Hugging Face checkpoint); "
                                      f"{', '.join(given)} apply to an ALBEF .pth file only")
            convert_hf_checkpoint(args.src, args.dst, overwrite=args.overwrite)
            return
        vision = {k: getattr(args, k) for k in ("patch_size", "vision_width", "vision_depth",
                                                  "vision_heads") if getattr(args, k) is not None}
        convert_albef_checkpoint(args.src, args.dst, args.bert_config, args.vocab,
                                 args.image_res, allow_pickle=args.allow_pickle,
                                 overwrite=args.overwrite, **vision)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
