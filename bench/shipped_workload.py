"""The shipped small model (weights/shapesref-itm) as a PyTorch `BlipForImageTextRetrieval`,
and ShapesRef scenes to run it on: a workload under which later IGRS passes are accepted, so
the benchmark's parity check covers the moving average and the keep-mask update too.

The Flax parameters are mapped back onto the HF key table of `iterprime_jax`'s converter (the
inverse of its layout changes) and checked by converting the result forward again: the
round trip must reproduce every parameter exactly.

torch is a benchmark/test tool only; the library never imports this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "shapesref-itm"


def hf_config_from_ours(cfg: Any) -> Any:
    """transformers `BlipConfig` of the same architecture as our `BlipConfig`."""
    from transformers import BlipConfig as HFBlipConfig

    v, t = cfg.vision, cfg.text
    gh, gw = v.image_hw
    if gh != gw:
        raise ValueError(f"HF BLIP needs a square image size, got {v.image_hw}")
    return HFBlipConfig(
        vision_config={"image_size": gh, "patch_size": v.patch_size,
                       "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
                       "num_hidden_layers": v.num_hidden_layers,
                       "num_attention_heads": v.num_attention_heads,
                       "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act},
        text_config={"vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
                     "intermediate_size": t.intermediate_size,
                     "num_hidden_layers": t.num_hidden_layers,
                     "num_attention_heads": t.num_attention_heads,
                     "max_position_embeddings": t.max_position_embeddings,
                     "layer_norm_eps": t.layer_norm_eps, "hidden_act": t.hidden_act,
                     "encoder_hidden_size": t.encoder_hidden_size,
                     "pad_token_id": t.pad_token_id},
        image_text_hidden_size=cfg.projection_dim)


def torch_model_from_params(params: Any, cfg: Any) -> Any:
    """A torch `BlipForImageTextRetrieval` holding `params` (our Flax tree)."""
    import torch
    from transformers import BlipForImageTextRetrieval

    from iterprime_jax.convert import (
        IGNORED_BUFFERS,
        _flatten,
        _map_tensor,
        abstract_params,
        convert_state_dict,
    )

    model = BlipForImageTextRetrieval(hf_config_from_ours(cfg)).eval()
    targets = _flatten(abstract_params(cfg))
    flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
    state = {}
    for key, value in model.state_dict().items():
        if key in IGNORED_BUFFERS:
            state[key] = value
            continue
        path, _ = _map_tensor(key, value.numpy(), targets)
        ours = flat[path]
        if path[-1] == "kernel":  # Dense (in, out) -> Linear (out, in); Conv HWIO -> OIHW
            ours = ours.T if ours.ndim == 2 else ours.transpose(3, 2, 0, 1)
        if tuple(ours.shape) != tuple(value.shape):
            raise ValueError(f"{key}: {tuple(ours.shape)} vs torch {tuple(value.shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(ours))
    model.load_state_dict(state)
    back = _flatten(convert_state_dict({k: v.numpy() for k, v in state.items()}, cfg))
    bad = [k for k in flat if not np.array_equal(back[k], flat[k])]
    if bad or set(back) != set(flat):
        raise ValueError(f"round trip torch -> flax changed {bad[:5]}")
    return model


def shapesref_scenes(n_images: int, split: str = "val", start: int = 0
                     ) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
    """(image (H, W, 3) uint8, sentences, instance masks (N, H, W) as proposals) of the first
    ShapesRef images of `split` (the default benchmark generator)."""
    from iterprime_jax import shapesref as sr

    out = []
    for i in range(start, start + n_images):
        scene, refs = sr.generate_example(sr.ShapesRefConfig(), split, i)
        props = np.stack([o.mask for o in scene.objects]).astype(bool)
        out.append((scene.image, [s for r in refs for s in r.sentences], props))
    return out
