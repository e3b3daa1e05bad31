"""PyTorch reference of the IteRPrimE pipeline, run the way the authors run it.

Per sentence and per IGRS pass: a FULL forward of transformers' `BlipForImageTextRetrieval`
(image encoder included, image re-preprocessed from uint8), hooks on layer L's cross-attention
probabilities (`retain_grad`), `logit.backward()` with every parameter requiring grad, eager,
one sample at a time. The PWE heat formula and the IGRS rule are a straightforward port of the
authors' code (index lists over token positions, a Python `break` on a rejected pass), written
independently of `iterprime_jax` so that the benchmark's parity check compares two
implementations. The final map is upsampled with torch's own `F.interpolate` (bicubic), as the
authors do. Proposal selection follows docs/method.md section 4.

torch is a benchmark/test tool only; the library never imports this file.

transformers 5 drops the cross-attention mask (`BlipTextAttention` hands it to
`BlipTextSelfAttention` as `attention_mask`, which then reads its own `encoder_attention_mask`):
a forward pre-hook puts the IGRS keep-mask where the cross-attention reads it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from transformers import BlipConfig as HFBlipConfig
from transformers import BlipForImageTextRetrieval

CLIP_MEAN = np.asarray((0.48145466, 0.4578275, 0.40821073), np.float32)
CLIP_STD = np.asarray((0.26862954, 0.26130258, 0.27577711), np.float32)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


# --------------------------------------------------------------------------- the model
def build_model(seed: int = 0, hf_config: HFBlipConfig | None = None
                ) -> BlipForImageTextRetrieval:
    """blip-itm-base-coco architecture (HF `BlipConfig()` defaults) with random weights.

    HF initialises the vision tower with std 1e-10 (a degenerate, constant image embedding),
    so every tensor is re-drawn from a fixed generator: matrices/embeddings N(0, 0.02),
    LayerNorm scales 1 + N(0, 0.1), biases N(0, 0.02). Deterministic given `seed`.
    """
    cfg = hf_config or HFBlipConfig()
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            low = name.lower()
            if "layernorm" in low or "layer_norm" in low:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def preprocess(image_uint8: np.ndarray, size: int = 384) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, S, S) float32 (PIL bicubic, /255, CLIP mean/std), as
    `BlipImageProcessor`."""
    x = Image.fromarray(image_uint8).resize((size, size), resample=Image.BICUBIC)
    x = (np.asarray(x, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# --------------------------------------------------------------------------- Grad-CAM pass
class GradCAMHooks:
    """Hooks on every cross-attention: the keep-mask is routed to `encoder_attention_mask`;
    layer `layer`'s probabilities are captured with `retain_grad()`."""

    def __init__(self, model: BlipForImageTextRetrieval, layer: int = 8):
        self.model = model
        self.layer = layer
        self.enc_mask: torch.Tensor | None = None
        self.probs: torch.Tensor | None = None
        self.handles = []
        for i, lay in enumerate(model.text_encoder.encoder.layer):
            sa = lay.crossattention.self
            self.handles.append(sa.register_forward_pre_hook(self._pre, with_kwargs=True))
            if i == layer:
                self.handles.append(sa.register_forward_hook(self._capture))

    def _pre(self, module, args, kwargs):
        kwargs["encoder_attention_mask"] = self.enc_mask
        return args, kwargs

    def _capture(self, module, args, output):
        probs = output[1]
        if probs.requires_grad:
            probs.retain_grad()
        self.probs = probs

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def gradcam_pass(model: BlipForImageTextRetrieval, hooks: GradCAMHooks, image_uint8: np.ndarray,
                 input_ids: np.ndarray, keep: np.ndarray | None, device: str
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """One full forward + backward for one sentence (1-D unpadded ids).

    keep: (gh*gw,) 1 = visible patch, or None. Returns cam, relu-free grad (heads, T, gh*gw)
    (image CLS dropped) and P(match).
    """
    size = model.config.vision_config.image_size
    pixels = torch.from_numpy(preprocess(image_uint8, size))[None].to(device)
    ids = torch.from_numpy(np.asarray(input_ids, np.int64))[None].to(device)
    am = torch.ones_like(ids)
    if keep is None:
        hooks.enc_mask = None
    else:
        full = np.concatenate([[1.0], np.asarray(keep, np.float32)])
        m = torch.from_numpy(full.astype(np.float32))[None, None, None, :].to(device)
        hooks.enc_mask = (1.0 - m) * torch.finfo(torch.float32).min
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=am, use_itm_head=True)
    logits = out.itm_score
    p_match = torch.softmax(logits.detach(), dim=-1)[0, 1].item()
    model.zero_grad()
    logits[:, 1].sum().backward()
    cam = hooks.probs.detach()[0, :, :, 1:].float().cpu().numpy()
    grad = hooks.probs.grad.detach()[0, :, :, 1:].float().cpu().numpy()
    hooks.probs = None
    return cam, grad, p_match


# --------------------------------------------------------------------------- PWE heat
def minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    m = x.max()
    return x / m if m > 0 else np.zeros_like(x)


def pwe_heat(cam: np.ndarray, grad: np.ndarray, focus_ids: list[int], primary_ids: list[int],
             n_valid: int, grid: tuple[int, int]) -> np.ndarray:
    """Authors' index-list formula (docs/method.md section 2); cam/grad (heads, T, gh*gw)."""
    h = cam.shape[0]
    cam = torch.from_numpy(cam[:, :n_valid]).reshape(h, n_valid, *grid)
    grad = torch.from_numpy(grad[:, :n_valid]).clamp(min=0).reshape(h, n_valid, *grid)
    if primary_ids:
        mg = grad[:, primary_ids].mean(1, keepdim=True)
        mc = cam[:, primary_ids].mean(1, keepdim=True)
        mm = mg * mc
        others = [t for t in focus_ids if t not in primary_ids]
        all_ids = list(focus_ids) + list(primary_ids) * len(focus_ids)
        if others:
            d = mc - cam[:, others]
            norm = torch.linalg.vector_norm(d, ord=2, dim=1, keepdim=True)
            norm = torch.where(norm == 0, torch.tensor(1e-8), norm)
            enhanced = d / norm * mg * mm
        else:
            enhanced = cam[:, :0]
        maps = torch.cat([(grad[:, 0] * cam[:, 0])[:, None], enhanced,
                          grad[:, all_ids] * cam[:, all_ids]], dim=1)
        per_head = maps.mean(1)
        return minmax(per_head.mean(0).numpy().astype(np.float32))
    # no primary word, the authors' branch as written: with focus words every real token,
    # without them [CLS] alone; per token head-mean grad times head-mean cam, token mean
    ids = list(range(n_valid)) if focus_ids else [0]
    per_token = grad.mean(0)[ids] * cam.mean(0)[ids]
    return minmax(per_token.mean(0).numpy().astype(np.float32))


# --------------------------------------------------------------------------- IGRS
def stretch(x: np.ndarray, k: float = 20.0, c: float = 0.5) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-k * (x - c)))
    return s / s.max()


@dataclasses.dataclass
class RefResult:
    heat: np.ndarray            # (gh, gw) final running map
    heats: list[np.ndarray]     # per pass actually run (incl. a rejected last one)
    scores: list[float]         # P(match) per pass run
    keeps: list[np.ndarray]     # keep-mask fed to each pass (gh*gw,)
    iterations: int             # accepted passes
    first_pass: bool = True     # `heat` is pass 0's own map (stretched after upsampling)
    keep: np.ndarray | None = None  # final keep-mask (gh*gw,) after the accepted passes
    up: np.ndarray | None = None
    index: int = -1
    has_candidate: bool = False
    passes: int = 0             # forward+backward passes run


def igrs(model, hooks, image_uint8, input_ids, focus_ids, primary_ids, iterations: int,
         alpha: float, device: str, grid: tuple[int, int], sharpness: float = 20.0,
         center: float = 0.5, threshold: float = 0.5) -> RefResult:
    n_valid = len(input_ids)

    def run(keep):
        cam, grad, p = gradcam_pass(model, hooks, image_uint8, input_ids, keep, device)
        return pwe_heat(cam, grad, focus_ids, primary_ids, n_valid, grid), p

    h0, p0 = run(None)
    res = RefResult(heat=h0, heats=[h0], scores=[p0],
                    keeps=[np.ones(grid[0] * grid[1], np.int32)], iterations=1, passes=1)
    keep = (stretch(h0, sharpness, center) < threshold).reshape(-1).astype(np.int32)
    running, prev = h0, p0
    for _ in range(1, iterations):
        hi, pi = run(keep)
        res.heats.append(hi)
        res.scores.append(pi)
        res.keeps.append(keep.copy())
        res.passes += 1
        if pi < prev:
            break
        keep = keep & (stretch(hi, sharpness, center) < threshold).reshape(-1).astype(np.int32)
        running = (1 - alpha) * running + alpha * hi
        prev = pi
        res.iterations += 1
        res.first_pass = False
    res.heat = running.astype(np.float32)
    res.keep = keep
    return res


# --------------------------------------------------------------------------- upsampling
def upsample(heat: np.ndarray, hw: tuple[int, int], first_pass: bool = False) -> np.ndarray:
    """(gh, gw) -> (H, W) as the authors: `F.interpolate(mode="bicubic",
    align_corners=False)`, min-max normalised, and `stretch`ed when the map is pass 0's own."""
    t = torch.from_numpy(np.asarray(heat, np.float32))[None, None]
    up = minmax(F.interpolate(t, size=hw, mode="bicubic", align_corners=False)[0, 0].numpy())
    return stretch(up).astype(np.float32) if first_pass else up


# --------------------------------------------------------------------------- selection
def count_components(proposals: np.ndarray) -> np.ndarray:
    return np.asarray([ndimage.label(m, structure=_FOUR)[1] if m.any() else 0
                       for m in proposals], np.int32)


def select(up: np.ndarray, proposals: np.ndarray, ncomp: np.ndarray, max_components: int = 12
           ) -> tuple[int, bool]:
    seeds = up >= up.max()
    best, best_score = -1, -math.inf
    for i, m in enumerate(proposals):
        if ncomp[i] > max_components or not (m & seeds).any():
            continue
        score = float((m * (1.0 + up)).sum() / (m.sum() + 1e-5))
        if score > best_score:
            best, best_score = i, score
    return best, best >= 0


# --------------------------------------------------------------------------- end to end
@dataclasses.dataclass(frozen=True)
class Sentence:
    """Unpadded prompt ids and token-position lists (focus includes the primary word)."""

    input_ids: np.ndarray
    focus_ids: list[int]
    primary_ids: list[int]

    @classmethod
    def from_arrays(cls, ids: np.ndarray, am: np.ndarray, focus: np.ndarray,
                    primary: np.ndarray) -> Sentence:
        n = int(np.asarray(am).sum())
        return cls(np.asarray(ids[:n]), [int(i) for i in np.flatnonzero(focus[:n])],
                   [int(i) for i in np.flatnonzero(primary[:n])])


class Reference:
    """The authors' way: one sentence at a time, full model forward + backward per pass."""

    def __init__(self, model: BlipForImageTextRetrieval, layer: int = 8, iterations: int = 3,
                 alpha: float = 0.2, max_components: int = 12, device: str = "cpu"):
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(True)  # as the authors: parameter grads are computed too
        self.hooks = GradCAMHooks(self.model, layer)
        vc = model.config.vision_config
        self.grid = (vc.image_size // vc.patch_size,) * 2
        self.iterations, self.alpha = iterations, alpha
        self.max_components, self.device = max_components, device

    def segment(self, image_uint8: np.ndarray, sentence: Sentence, proposals: np.ndarray,
                ncomp: np.ndarray) -> RefResult:
        res = igrs(self.model, self.hooks, image_uint8, sentence.input_ids, sentence.focus_ids,
                   sentence.primary_ids, self.iterations, self.alpha, self.device, self.grid)
        res.up = upsample(res.heat, image_uint8.shape[:2], res.first_pass)
        if len(proposals):
            res.index, res.has_candidate = select(res.up, proposals, ncomp, self.max_components)
        return res

    def segment_image(self, image_uint8: np.ndarray, sentences: list[Sentence],
                      proposals: np.ndarray) -> list[RefResult]:
        ncomp = count_components(proposals)
        return [self.segment(image_uint8, s, proposals, ncomp) for s in sentences]
