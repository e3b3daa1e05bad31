"""`ALBEF.pth` -> the Flax ALBEF parameter tree, its `AlbefConfig` and the authors' settings.

The checkpoint is ALBEF's training dict: its `"model"` entry (or the dict itself) is the state
dict. Inference uses `visual_encoder.*`, `text_encoder.bert.*` (also accepted without `bert.`,
as ALBEF's fine-tuned models save it) and `itm_head.*`; the training-only entries (momentum
copies `*_m.*`, the queues, `temp`, `vision_proj` / `text_proj`, the MLM head
`text_encoder.cls.*`, buffers) are skipped. A needed key that is missing is an error naming it
(the authors load with `strict=False`, which leaves such weights random).

`pos_embed` is resized bicubically (PyTorch `F.interpolate(mode="bicubic",
align_corners=False)`, CLS untouched, as ALBEF's `interpolate_pos_embed`) when the caller asks
for another image size; otherwise a grid that does not match is an error naming both sizes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...resize import bicubic_weights
from ...types import Params
from ..checkpoint import CheckpointError, read_json_object
from ..keytable import Path_, flatten, match_state_dict
from .config import AlbefConfig, AlbefTextConfig, albef_vision
from .model import abstract_params

#: First key components of training-only entries (skipped).
SKIPPED_ROOTS = ("image_queue", "text_queue", "idx_queue", "queue_ptr", "temp", "vision_proj",
                 "text_proj")
SKIPPED_PREFIXES = ("text_encoder.cls.", "text_encoder.bert.pooler.", "text_encoder.pooler.")
SKIPPED_BUFFERS = ("text_encoder.bert.embeddings.position_ids",
                   "text_encoder.embeddings.position_ids")

#: The IteRPrimE authors' method settings for ALBEF (written to the converted `method.json`).
#: The prompt is never cut short of the model's positions (`authors_method` adds
#: ``max_text_length``); the text-length buckets keep the cost to the longest real prompt.
AUTHORS_METHOD = {"layer": 8, "use_template": True, "template": "there is a {}",
                  "append_sep": False, "authors_code": True, "parser": "stanza"}


def is_skipped(key: str) -> bool:
    """True for the entries inference never uses (momentum copies, queues, projections, MLM)."""
    root = key.split(".", 1)[0]
    return (root.endswith("_m") or root in SKIPPED_ROOTS or key.startswith(SKIPPED_PREFIXES)
            or key in SKIPPED_BUFFERS)


def canonical_key(key: str) -> str:
    """`text_encoder.X` (a fine-tuned BertModel) -> `text_encoder.bert.X` (ALBEF.pth's name)."""
    if key.startswith("text_encoder.") and not key.startswith("text_encoder.bert."):
        return "text_encoder.bert." + key[len("text_encoder."):]
    return key


def torch_key(path: Path_) -> str:
    """A Flax parameter path -> the `ALBEF.pth` key (`blocks_3` -> `blocks.3`, kernel /
    scale / embedding -> weight)."""
    parts: list[str] = []
    for p in path[:-1]:
        head, _, idx = p.rpartition("_")
        parts.extend([head, idx] if idx.isdigit() and head in ("blocks", "layer") else [p])
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
    return ".".join(parts)


def model_state_dict(raw: Any, source: str) -> dict[str, Any]:
    """The state dict inside an ALBEF checkpoint object (`raw["model"]` or `raw`), checked to be
    ALBEF's (visual_encoder.* and text_encoder.* keys)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a state dict")
    sd = raw["model"] if isinstance(raw.get("model"), Mapping) else raw
    keys = [str(k) for k in sd]
    has_v = any(k.startswith("visual_encoder.") for k in keys)
    has_t = any(k.startswith("text_encoder.") for k in keys)
    if not (has_v and has_t):
        hint = ""
        if any(k.startswith(("vision_model.", "text_encoder.encoder.")) for k in keys) and \
                any(k.startswith("vision_model.") for k in keys):
            hint = " (it looks like a Hugging Face BLIP state dict: convert the BLIP directory)"
        raise CheckpointError(
            f"{source} is not an ALBEF checkpoint: it has no "
            f"{'visual_encoder.*' if not has_v else 'text_encoder.*'} keys{hint}; first keys: "
            f"{keys[:5]}")
    return dict(sd)


def _count(prefix: str, keys: list[str]) -> int:
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in keys
           if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(idx) + 1 if idx else 0


def _shape(sd: Mapping[str, np.ndarray], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: ALBEF checkpoint lacks {key!r}")
    return tuple(np.shape(sd[key]))


def checkpoint_sizes(sd: Mapping[str, np.ndarray], source: str) -> dict[str, int]:
    """Sizes read off the tensors (keys canonical): widths, depths, grid, vocab, fusion."""
    keys = list(sd)
    _, n_pos, v_width = _shape(sd, "visual_encoder.pos_embed", source)
    proj = _shape(sd, "visual_encoder.patch_embed.proj.weight", source)
    vocab, t_width = _shape(sd, "text_encoder.bert.embeddings.word_embeddings.weight", source)
    n_layers = _count("text_encoder.bert.encoder.layer.", keys)
    layer_keys = [k for k in keys if k.startswith("text_encoder.bert.encoder.layer.")]
    cross = sorted({int(k.split(".")[4]) for k in layer_keys if ".crossattention." in k})
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise CheckpointError(f"{source}: visual_encoder.pos_embed has {n_pos - 1} patch "
                              "positions, not a square grid")
    inter = _shape(sd, "text_encoder.bert.encoder.layer.0.intermediate.dense.weight", source)[0]
    return {"vision_width": v_width, "patch_size": proj[-1], "grid": grid,
            "vision_depth": _count("visual_encoder.blocks.", keys), "hidden_size": t_width,
            "vocab_size": vocab, "num_hidden_layers": n_layers,
            "fusion_layer": cross[0] if cross else -1, "intermediate_size": inter,
            "max_position_embeddings":
                _shape(sd, "text_encoder.bert.embeddings.position_embeddings.weight", source)[0],
            "type_vocab_size":
                _shape(sd, "text_encoder.bert.embeddings.token_type_embeddings.weight", source)[0],
            "vision_mlp": _shape(sd, "visual_encoder.blocks.0.mlp.fc1.weight", source)[0]}


def read_bert_config(path: str | Path) -> AlbefTextConfig:
    """ALBEF's `config_bert.json` -> AlbefTextConfig (errors name the file)."""
    path = Path(path)
    d = read_json_object(path, f"--bert-config {path}")
    if "fusion_layer" not in d:
        raise CheckpointError(f"--bert-config {path} has no 'fusion_layer': not ALBEF's "
                              "config_bert.json")
    try:
        return AlbefTextConfig.from_bert_config(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"--bert-config {path}: {e}") from None


def build_config(sizes: Mapping[str, int], source: str, text: AlbefTextConfig | None = None,
                 bert_source: str = "the default ALBEF config_bert.json",
                 image_res: int | None = None, patch_size: int = 16, vision_width: int = 768,
                 vision_depth: int = 12, vision_heads: int = 12) -> AlbefConfig:
    """The model config from the given settings, checked against the tensors' `sizes` (a
    disagreement is an error naming both); `image_res` None: the checkpoint's own grid."""
    text = text or AlbefTextConfig()
    for field in ("hidden_size", "vocab_size", "num_hidden_layers", "fusion_layer",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        want, got = getattr(text, field), sizes[field]
        if want != got:
            raise CheckpointError(f"{bert_source} says {field}={want} but {source} has "
                                  f"{field}={got}")
    for flag, want, got in (("--vision-width", vision_width, sizes["vision_width"]),
                            ("--vision-depth", vision_depth, sizes["vision_depth"]),
                            ("--patch-size", patch_size, sizes["patch_size"])):
        if want != got:
            raise CheckpointError(f"{flag} {want} but {source} has {got}")
    if vision_width % vision_heads:
        raise CheckpointError(f"--vision-heads {vision_heads} does not divide the vision width "
                              f"{vision_width}")
    if text.encoder_hidden_size != vision_width:
        raise CheckpointError(f"{bert_source} says encoder_width={text.encoder_hidden_size} but "
                              f"{source} has vision width {vision_width}")
    res = image_res if image_res is not None else sizes["grid"] * patch_size
    if res % patch_size:
        raise CheckpointError(f"--image-res {res} is not a multiple of the patch size "
                              f"{patch_size}")
    vision = albef_vision(res, patch_size, vision_width, vision_depth, vision_heads,
                          sizes["vision_mlp"] / vision_width)
    return AlbefConfig(vision=vision, text=text)


def resize_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): the patch positions resized as PyTorch's
    `F.interpolate(mode="bicubic", align_corners=False)`, the CLS position unchanged."""
    pe = np.asarray(pos_embed, np.float32)
    g = math.isqrt(pe.shape[1] - 1)
    w = np.asarray(bicubic_weights(g, grid), np.float64)  # (grid, g)
    patches = pe[0, 1:].reshape(g, g, -1).astype(np.float64)
    out = np.einsum("ia,abd,jb->ijd", w, patches, w).reshape(1, grid * grid, -1)
    return np.concatenate([pe[:, :1], out.astype(np.float32)], axis=1)


def convert_albef_state_dict(sd: Mapping[str, Any], source: str,
                             bert_config: str | Path | AlbefTextConfig | None = None,
                             image_res: int | None = None, patch_size: int = 16,
                             vision_width: int = 768, vision_depth: int = 12,
                             vision_heads: int = 12) -> tuple[AlbefConfig, Params]:
    """An ALBEF state dict (numpy values) -> (AlbefConfig, Flax params).

    `bert_config`: ALBEF's `config_bert.json` (a path) or an `AlbefTextConfig`; None: ALBEF's.

    `image_res` None keeps the checkpoint's grid only if it gives `patch_size * 16` = 256 px
    (the authors' setting), else the mismatch is an error naming both sizes; an explicit
    `image_res` different from the checkpoint's resizes `pos_embed`.
    """
    kept = {canonical_key(k): np.asarray(v) for k, v in sd.items() if not is_skipped(k)}
    sizes = checkpoint_sizes(kept, source)
    ckpt_res = sizes["grid"] * sizes["patch_size"]
    if image_res is None and ckpt_res != 256:
        raise CheckpointError(
            f"{source} has a {sizes['grid']}x{sizes['grid']} position grid ({ckpt_res} px) but "
            f"the image size is 256 px (the default); pass --image-res {ckpt_res} to keep it or "
            f"--image-res 256 to resize pos_embed")
    text, bsrc = AlbefTextConfig(), "the default ALBEF config_bert.json"
    if isinstance(bert_config, AlbefTextConfig):
        text, bsrc = bert_config, "the given text config"
    elif bert_config is not None:
        text, bsrc = read_bert_config(bert_config), f"--bert-config {bert_config}"
    config = build_config(sizes, source, text, bsrc, image_res if image_res else ckpt_res,
                          patch_size, vision_width, vision_depth, vision_heads)
    grid = config.vision.grid
    if grid[0] != sizes["grid"]:
        kept["visual_encoder.pos_embed"] = resize_pos_embed(kept["visual_encoder.pos_embed"],
                                                            grid[0])
    return config, _match(kept, config, source)


def _match(kept: Mapping[str, np.ndarray], config: AlbefConfig, source: str) -> Params:
    """Canonical inference keys -> params of `config`; a missing needed key is an error
    naming it."""
    abstract = abstract_params(config)
    expected = {torch_key(p) for p in flatten(abstract)}
    missing = sorted(expected - set(kept))
    if missing:
        raise CheckpointError(f"{source}: ALBEF checkpoint lacks {len(missing)} needed "
                              f"key(s): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return match_state_dict(kept, abstract, f"ALBEF ({source})")


def convert_state_dict(sd: Mapping[str, Any], config: AlbefConfig) -> Params:
    """The key table: an ALBEF state dict -> the params of `config` as they are (no
    `pos_embed` resizing; training-only entries skipped; CheckpointError naming keys)."""
    kept = {canonical_key(k): np.asarray(v) for k, v in sd.items() if not is_skipped(k)}
    return _match(kept, config, "state dict")


def read_albef_checkpoint(src: str | Path, bert_config: str | Path | None = None,
                          image_res: int | None = None, patch_size: int = 16,
                          vision_width: int = 768, vision_depth: int = 12,
                          vision_heads: int = 12, allow_pickle: bool = False
                          ) -> tuple[AlbefConfig, Params]:
    """The converter: an `ALBEF.pth` file -> (AlbefConfig, Flax params) (`read_pth`, then
    `convert_albef_state_dict` with these settings)."""
    state = model_state_dict(read_pth(src, allow_pickle), str(src))
    return convert_albef_state_dict(state, str(src), bert_config, image_res, patch_size,
                                    vision_width, vision_depth, vision_heads)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes in torch's messages


def is_pickled_file(path: str | Path) -> bool:
    """Whether `path` is a well-formed `torch.save` file: a zip archive whose ``data.pkl`` is
    a complete pickle, or a legacy file starting with one. Read with `pickletools` only
    (nothing is unpickled or executed)."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not names:
                    return False
                data = z.read(names[0])
        else:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:  # noqa: BLE001 - any parse failure: not a pickle
        return False
    return True


def read_pth(path: str | Path, allow_pickle: bool = False) -> Any:
    """`torch.load` an `.pth` on CPU (tensors as numpy). Needs torch (the `convert` extra);
    `allow_pickle` permits arbitrary pickled objects (only for files you trust)."""
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"reading {path} (a PyTorch .pth) needs torch: pip install "
                              "'iterprime-jax[convert]'") from None
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises pickle/zip/runtime errors
        if not is_pickled_file(path):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save "
                                  "archive nor a pickle); is it the right file?") from None
        hint = ("" if allow_pickle else "; it holds pickled objects other than tensors: if "
                "the file is trusted, pass --allow-pickle")
        first = _ANSI.sub("", str(e)).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: "
                              f"{type(e).__name__}: {first}{hint}") from None

    def to_np(v: Any) -> Any:
        return v.detach().float().numpy() if isinstance(v, torch.Tensor) else v

    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        return {"model": {k: to_np(v) for k, v in raw["model"].items()}}
    return {k: to_np(v) for k, v in raw.items()} if isinstance(raw, Mapping) else raw


def authors_method(config: AlbefConfig) -> dict[str, Any]:
    """The converted checkpoint's `method.json`: the authors' settings (layer 8, clipped to the
    model's last layer for small models; the Stanza parser; prompts up to the model's text
    positions, so none that fits is truncated, as the authors' tokenizer does not truncate)."""
    layer = min(AUTHORS_METHOD["layer"], config.text.num_hidden_layers - 1)
    return {**AUTHORS_METHOD, "layer": max(layer, config.text.fusion_layer),
            "max_text_length": int(config.text.max_position_embeddings)}
