"""PyTorch reference helpers for parity tests (torch is a test-time tool only).

Builds tiny random `BlipForImageTextRetrieval` models whose signals are large enough that a
wrong parameter mapping cannot hide below the tolerances, and runs them with hooks that capture
(and keep gradients of) the cross-attention probabilities.

transformers 5 drops the cross-attention mask (`BlipTextAttention` passes it as
`attention_mask`; `BlipTextSelfAttention` then uses its own `encoder_attention_mask`, None):
`run_torch` routes the mask to `encoder_attention_mask` itself with a forward pre-hook.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import BlipConfig as HFBlipConfig
from transformers import BlipForImageTextRetrieval


def hf_config(image_size: int = 32, patch_size: int = 8, v_hidden: int = 32, v_layers: int = 2,
              v_heads: int = 4, t_hidden: int = 48, t_layers: int = 3, t_heads: int = 3,
              vocab_size: int = 120, init_range: float = 0.15) -> HFBlipConfig:
    cfg = HFBlipConfig(
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=v_hidden,
                           intermediate_size=2 * v_hidden, num_hidden_layers=v_layers,
                           num_attention_heads=v_heads, initializer_range=init_range),
        text_config=dict(vocab_size=vocab_size, hidden_size=t_hidden,
                         intermediate_size=2 * t_hidden, num_hidden_layers=t_layers,
                         num_attention_heads=t_heads, max_position_embeddings=64,
                         initializer_range=init_range),
        image_text_hidden_size=16, initializer_range=init_range)
    return cfg


def build_model(cfg: HFBlipConfig, seed: int = 0) -> BlipForImageTextRetrieval:
    """Random model with perturbed LayerNorms and embeddings (so every tensor matters)."""
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or "embedding" in name:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return model


def save_model(model: BlipForImageTextRetrieval, path: Path) -> Path:
    model.save_pretrained(str(path))
    return path


def _ext_mask(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def run_torch(model: BlipForImageTextRetrieval, pixel_nhwc: np.ndarray, input_ids: np.ndarray,
              attention_mask: np.ndarray, image_mask: np.ndarray | None = None,
              grad_layer: int | None = None) -> dict[str, np.ndarray]:
    """Forward (and backward of the match logit if `grad_layer` is set) with hooks.

    image_mask: (B, gh*gw) 1 = visible patch; CLS is always visible. Returns logits (B, 2),
    image_embeds (B, S, D), cross (list of (B, heads, T, S)), and grad (B, heads, T, S).
    """
    pixels = torch.tensor(np.ascontiguousarray(pixel_nhwc.transpose(0, 3, 1, 2)))
    ids = torch.tensor(input_ids, dtype=torch.long)
    am = torch.tensor(attention_mask, dtype=torch.long)
    enc_mask = None
    if image_mask is not None:
        full = np.concatenate([np.ones((image_mask.shape[0], 1)), image_mask], axis=1)
        enc_mask = _ext_mask(torch.tensor(full))
    captured: list[torch.Tensor] = []
    handles = []

    def pre_hook(module, args, kwargs):
        if enc_mask is not None:
            kwargs["encoder_attention_mask"] = enc_mask
        return args, kwargs

    def fwd_hook(module, args, output):
        probs = output[1]
        if grad_layer is not None:
            probs.retain_grad()
        captured.append(probs)

    for layer in model.text_encoder.encoder.layer:
        sa = layer.crossattention.self
        handles.append(sa.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(sa.register_forward_hook(fwd_hook))
    try:
        with torch.set_grad_enabled(grad_layer is not None):
            image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
            hidden = model.text_encoder(input_ids=ids, attention_mask=am,
                                        encoder_hidden_states=image_embeds).last_hidden_state
            logits = model.itm_head(hidden[:, 0])
            out = {"logits": logits.detach().numpy(),
                   "image_embeds": image_embeds.detach().numpy()}
            if grad_layer is not None:
                logits[:, 1].sum().backward()
                out["grad"] = captured[grad_layer].grad.detach().numpy()
            out["cross"] = [c.detach().numpy() for c in captured]
    finally:
        for h in handles:
            h.remove()
    return out
