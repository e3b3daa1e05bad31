"""A PyTorch ALBEF ITM reference composed from transformers' own modules (no ALBEF code),
and synthetic `ALBEF.pth` state dicts in ALBEF's naming.

- image tower: `ViTModel` (pre-LN, LayerNorm eps 1e-6, exact GELU), its q/k/v filled from the
  fused timm `attn.qkv` rows [0:D], [D:2D], [2D:3D];
- text tower: `BertEmbeddings` (word + position + token type 0, LayerNorm), then `BertLayer`s:
  text-only below `fusion_layer`, with cross-attention from it on (eager attention,
  bidirectional: our own additive masks, never a causal one); the cross-attention key/value
  Linears take the vision width (ALBEF's `encoder_width`);
- `Linear(D, 2)` ITM head on the text [CLS] output.
Used by tests/test_albef*.py and bench/bench_albef.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, ViTConfig, ViTModel
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer


@dataclasses.dataclass(frozen=True)
class Sizes:
    """An ALBEF model's sizes (odd by default: fusion layer not in the middle, a 5 x 5 grid,
    widths not 768)."""

    image: int = 40
    patch: int = 8
    v_width: int = 24
    v_depth: int = 2
    v_heads: int = 3
    t_width: int = 20
    t_layers: int = 5
    t_heads: int = 2
    t_inter: int = 28
    fusion: int = 1
    vocab: int = 30522
    max_pos: int = 32

    @property
    def grid(self) -> int:
        return self.image // self.patch


def random_albef_state_dict(s: Sizes, seed: int = 0, extras: bool = True,
                            scale: float = 0.3) -> dict[str, np.ndarray]:
    """A state dict with `ALBEF.pth`'s keys (float32 numpy); `extras` adds what inference never
    uses (momentum copies, queues, projections, MLM head, buffers)."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def lin(name: str, n_out: int, n_in: int) -> None:
        sd[f"{name}.weight"] = (rng.normal(size=(n_out, n_in)) * scale / np.sqrt(n_in) * 3
                                ).astype(np.float32)
        sd[f"{name}.bias"] = (rng.normal(size=(n_out,)) * 0.1).astype(np.float32)

    def ln(name: str, n: int) -> None:
        sd[f"{name}.weight"] = (1 + 0.1 * rng.normal(size=(n,))).astype(np.float32)
        sd[f"{name}.bias"] = (0.1 * rng.normal(size=(n,))).astype(np.float32)

    v, t = s.v_width, s.t_width
    ve = "visual_encoder"
    sd[f"{ve}.cls_token"] = rng.normal(size=(1, 1, v)).astype(np.float32)
    sd[f"{ve}.pos_embed"] = rng.normal(size=(1, 1 + s.grid ** 2, v)).astype(np.float32)
    sd[f"{ve}.patch_embed.proj.weight"] = (rng.normal(size=(v, 3, s.patch, s.patch)) * 0.1
                                           ).astype(np.float32)
    sd[f"{ve}.patch_embed.proj.bias"] = (rng.normal(size=(v,)) * 0.1).astype(np.float32)
    for i in range(s.v_depth):
        b = f"{ve}.blocks.{i}"
        ln(f"{b}.norm1", v)
        lin(f"{b}.attn.qkv", 3 * v, v)
        lin(f"{b}.attn.proj", v, v)
        ln(f"{b}.norm2", v)
        lin(f"{b}.mlp.fc1", 4 * v, v)
        lin(f"{b}.mlp.fc2", v, 4 * v)
    ln(f"{ve}.norm", v)
    te = "text_encoder.bert"
    sd[f"{te}.embeddings.word_embeddings.weight"] = rng.normal(size=(s.vocab, t)).astype(
        np.float32)
    sd[f"{te}.embeddings.position_embeddings.weight"] = rng.normal(size=(s.max_pos, t)).astype(
        np.float32)
    sd[f"{te}.embeddings.token_type_embeddings.weight"] = rng.normal(size=(2, t)).astype(
        np.float32)
    ln(f"{te}.embeddings.LayerNorm", t)
    for i in range(s.t_layers):
        b = f"{te}.encoder.layer.{i}"
        parts = ["attention"] + (["crossattention"] if i >= s.fusion else [])
        for a in parts:
            kv_in = v if a == "crossattention" else t
            lin(f"{b}.{a}.self.query", t, t)
            lin(f"{b}.{a}.self.key", t, kv_in)
            lin(f"{b}.{a}.self.value", t, kv_in)
            lin(f"{b}.{a}.output.dense", t, t)
            ln(f"{b}.{a}.output.LayerNorm", t)
        lin(f"{b}.intermediate.dense", s.t_inter, t)
        lin(f"{b}.output.dense", t, s.t_inter)
        ln(f"{b}.output.LayerNorm", t)
    lin("itm_head", 2, t)
    if extras:
        for k in [k for k in sd if k.startswith(("visual_encoder.", "text_encoder."))]:
            root, rest = k.split(".", 1)
            sd[f"{root}_m.{rest}"] = sd[k] + 1.0  # momentum copies differ
        lin("vision_proj", 8, v)
        lin("text_proj", 8, t)
        lin("vision_proj_m", 8, v)
        lin("text_proj_m", 8, t)
        sd["image_queue"] = rng.normal(size=(8, 16)).astype(np.float32)
        sd["text_queue"] = rng.normal(size=(8, 16)).astype(np.float32)
        sd["queue_ptr"] = np.zeros((1,), np.int64)
        sd["temp"] = np.asarray(0.07, np.float32)
        lin("text_encoder.cls.predictions.transform.dense", t, t)
        ln("text_encoder.cls.predictions.transform.LayerNorm", t)
        sd["text_encoder.cls.predictions.bias"] = np.zeros((s.vocab,), np.float32)
        sd["text_encoder.cls.predictions.decoder.weight"] = sd[
            f"{te}.embeddings.word_embeddings.weight"]
        sd[f"{te}.embeddings.position_ids"] = np.arange(s.max_pos)[None].astype(np.int64)
    return sd


def save_pth(sd: dict[str, np.ndarray], path, wrap: bool = True) -> None:
    """Write `sd` as ALBEF saves it: `{"model": state_dict, "epoch": ...}` (or bare)."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    torch.save({"model": tensors, "epoch": 29} if wrap else tensors, str(path))


class TorchAlbef(nn.Module):
    """The reference ITM model built from transformers modules, filled from an ALBEF state
    dict."""

    def __init__(self, s: Sizes, sd: dict[str, np.ndarray]):
        super().__init__()
        self.s = s
        vcfg = ViTConfig(hidden_size=s.v_width, num_hidden_layers=s.v_depth,
                         num_attention_heads=s.v_heads, intermediate_size=4 * s.v_width,
                         image_size=s.image, patch_size=s.patch, layer_norm_eps=1e-6,
                         hidden_act="gelu", qkv_bias=True, attn_implementation="eager")
        self.vit = ViTModel(vcfg, add_pooling_layer=False)
        common = dict(vocab_size=s.vocab, hidden_size=s.t_width, num_hidden_layers=s.t_layers,
                      num_attention_heads=s.t_heads, intermediate_size=s.t_inter,
                      max_position_embeddings=s.max_pos, type_vocab_size=2,
                      layer_norm_eps=1e-12, hidden_act="gelu", attn_implementation="eager")
        text_cfg = BertConfig(**common)
        cross_cfg = BertConfig(**common, is_decoder=True, add_cross_attention=True)
        self.embeddings = BertEmbeddings(text_cfg)
        layers = []
        for i in range(s.t_layers):
            layer = BertLayer(cross_cfg if i >= s.fusion else text_cfg)
            layer.attention.self.is_causal = False  # ALBEF's text attention is bidirectional
            if i >= s.fusion:  # ALBEF's encoder_width: key/value read the vision width
                layer.crossattention.self.key = nn.Linear(s.v_width, s.t_width)
                layer.crossattention.self.value = nn.Linear(s.v_width, s.t_width)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.itm_head = nn.Linear(s.t_width, 2)
        self.load_albef(sd)
        self.eval()

    @torch.no_grad()
    def load_albef(self, sd: dict[str, np.ndarray]) -> None:
        def cp(dst: torch.Tensor, key: str, rows: slice | None = None) -> None:
            src = torch.from_numpy(np.asarray(sd[key], np.float32))
            src = src[rows] if rows is not None else src
            assert dst.shape == src.shape, (key, dst.shape, src.shape)
            dst.copy_(src)

        v = self.s.v_width
        e = self.vit.embeddings
        cp(e.cls_token, "visual_encoder.cls_token")
        cp(e.position_embeddings, "visual_encoder.pos_embed")
        cp(e.patch_embeddings.projection.weight, "visual_encoder.patch_embed.proj.weight")
        cp(e.patch_embeddings.projection.bias, "visual_encoder.patch_embed.proj.bias")
        for i, layer in enumerate(self.vit.layers):
            b = f"visual_encoder.blocks.{i}"
            for j, proj in enumerate((layer.attention.q_proj, layer.attention.k_proj,
                                      layer.attention.v_proj)):
                rows = slice(j * v, (j + 1) * v)
                cp(proj.weight, f"{b}.attn.qkv.weight", rows)
                cp(proj.bias, f"{b}.attn.qkv.bias", rows)
            for mod, name in ((layer.attention.o_proj, "attn.proj"),
                              (layer.layernorm_before, "norm1"),
                              (layer.layernorm_after, "norm2"), (layer.mlp.fc1, "mlp.fc1"),
                              (layer.mlp.fc2, "mlp.fc2")):
                cp(mod.weight, f"{b}.{name}.weight")
                cp(mod.bias, f"{b}.{name}.bias")
        cp(self.vit.layernorm.weight, "visual_encoder.norm.weight")
        cp(self.vit.layernorm.bias, "visual_encoder.norm.bias")
        te = "text_encoder.bert"
        for name, p in self.embeddings.named_parameters():
            cp(p, f"{te}.embeddings.{name}")
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                cp(p, f"{te}.encoder.layer.{i}.{name}")
        cp(self.itm_head.weight, "itm_head.weight")
        cp(self.itm_head.bias, "itm_head.bias")

    def encode_image(self, pixels_nhwc: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
        return self.vit(pixel_values=x).last_hidden_state

    def match(self, image_embeds: torch.Tensor, input_ids: np.ndarray,
              attention_mask: np.ndarray, image_mask: np.ndarray | None = None,
              grad_layer: int | None = None, detach_image: bool = True
              ) -> dict[str, np.ndarray]:
        """Logits (B, 2), cross-attention probs per fusion layer {i: (B, heads, T, S)} and,
        with `grad_layer`, d(sum of match logits)/d(probs of that layer); `detach_image` False
        lets the backward pass run on into the image tower (the authors' way)."""
        ids = torch.tensor(np.asarray(input_ids), dtype=torch.long)
        am = torch.tensor(np.asarray(attention_mask), dtype=torch.float32)
        neg = torch.finfo(torch.float32).min
        self_mask = (1.0 - am[:, None, None, :]) * neg
        enc_mask = None
        if image_mask is not None:
            im = torch.tensor(np.asarray(image_mask), dtype=torch.float32)
            full = torch.cat([torch.ones(im.shape[0], 1), im], dim=1)
            enc_mask = (1.0 - full[:, None, None, :]) * neg
        captured: dict[int, torch.Tensor] = {}

        def hook(i: int):
            def fn(module, args, output):
                probs = output[1]
                if grad_layer is not None and probs.requires_grad:
                    probs.retain_grad()
                captured[i] = probs
            return fn

        handles = [layer.crossattention.self.register_forward_hook(hook(i))
                   for i, layer in enumerate(self.layers) if i >= self.s.fusion]
        try:
            with torch.set_grad_enabled(grad_layer is not None):
                enc = image_embeds.detach() if detach_image else image_embeds
                x = self.embeddings(input_ids=ids)
                for i, layer in enumerate(self.layers):
                    if i >= self.s.fusion:
                        x = layer(x, self_mask, encoder_hidden_states=enc,
                                  encoder_attention_mask=enc_mask)
                    else:
                        x = layer(x, self_mask)
                logits = self.itm_head(x[:, 0])
                out = {"logits": logits.detach().numpy(),
                       "cross": {i: c.detach().numpy() for i, c in captured.items()}}
                if grad_layer is not None:
                    logits[:, 1].sum().backward()
                    out["grad"] = captured[grad_layer].grad.detach().numpy()
        finally:
            for h in handles:
                h.remove()
        return out
