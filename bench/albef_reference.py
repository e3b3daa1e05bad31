"""The IteRPrimE authors' way with ALBEF, transcribed in PyTorch (eager): one sentence at a
time, a full model forward (image tower included) and backward per IGRS pass, Grad-CAM from
hooks on the cross-attention probabilities of text layer `layer`.

Where docs/method.md records a departure of the authors' code from the method as specified,
this transcription follows their code (what `IteRPrimEConfig(authors_code=True)` reproduces):
- `pwe_heat_authors`: with the primary word as the only focus word, the other-word maps are
  one all-zero map, so `D = mc - 0` adds the map `mg * mm` (where mc > 0) to the stack; without a
  primary word, every real token if the expression has focus words, else [CLS] alone;
- `igrs_authors`: a rejected pass is blended into the returned map before the loop stops.
The model is tests/albef_ref.py's `TorchAlbef` (transformers' ViTModel / BertLayer modules).
Used by tests/test_albef_method.py and bench/bench_albef.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

_EPS = 1e-8


def minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    m = x.max()
    return x / m if m > 0 else np.zeros_like(x)


def pwe_heat_authors(cam: np.ndarray, grad: np.ndarray, focus_ids: list[int],
                     primary_ids: list[int], n_valid: int, grid: tuple[int, int]) -> np.ndarray:
    """The authors' PWE on one sentence; cam/grad (heads, T, gh*gw) over image patches."""
    h = cam.shape[0]
    cam_t = torch.from_numpy(np.asarray(cam[:, :n_valid], np.float32)).reshape(h, n_valid, *grid)
    grad_t = torch.from_numpy(np.asarray(grad[:, :n_valid], np.float32)).clamp(min=0).reshape(
        h, n_valid, *grid)
    if primary_ids:
        mg = grad_t[:, primary_ids].mean(1, keepdim=True)
        mc = cam_t[:, primary_ids].mean(1, keepdim=True)
        mm = mg * mc
        others = [t for t in focus_ids if t not in primary_ids]
        # the authors stack the other focus words' maps; with none, one all-zero map remains
        other_cam = cam_t[:, others] if others else torch.zeros_like(mc)
        d = mc - other_cam
        norm = torch.linalg.vector_norm(d, ord=2, dim=1, keepdim=True)
        norm = torch.where(norm == 0, torch.tensor(_EPS), norm)
        enhanced = d / norm * mg * mm
        all_ids = list(focus_ids) + list(primary_ids) * len(focus_ids)
        maps = torch.cat([(grad_t[:, 0] * cam_t[:, 0])[:, None], enhanced,
                          grad_t[:, all_ids] * cam_t[:, all_ids]], dim=1)
        return minmax(maps.mean(1).mean(0).numpy().astype(np.float32))
    ids = list(range(n_valid)) if focus_ids else [0]  # the condition as written
    per_token = grad_t.mean(0)[ids] * cam_t.mean(0)[ids]
    return minmax(per_token.mean(0).numpy().astype(np.float32))


def stretch(x: np.ndarray, k: float = 20.0, c: float = 0.5) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-k * (x - c)))
    return s / s.max()


@dataclasses.dataclass
class AuthorsResult:
    heat: np.ndarray          # (gh, gw) returned running map
    iterations: int           # accepted passes
    first_pass: bool          # the map is pass 0's own (stretched after upsampling)
    scores: list[float]       # P(match) per pass run
    passes: int               # forward+backward passes run


def igrs_authors(run: Callable[[np.ndarray | None], tuple[np.ndarray, float]],
                 grid: tuple[int, int], iterations: int = 3, alpha: float = 0.2,
                 sharpness: float = 20.0, center: float = 0.5, threshold: float = 0.5
                 ) -> AuthorsResult:
    """IGRS as the authors' code: a rejected pass is blended in, then the loop stops.
    `run(keep)`: keep (gh*gw,) int32 or None (all visible) -> (heat (gh, gw), P(match))."""
    h0, p0 = run(None)
    res = AuthorsResult(heat=h0, iterations=1, first_pass=True, scores=[p0], passes=1)
    keep = (stretch(h0, sharpness, center) < threshold).reshape(-1).astype(np.int32)
    running, prev = h0, p0
    for _ in range(1, iterations):
        hi, pi = run(keep)
        res.scores.append(pi)
        res.passes += 1
        running = (1 - alpha) * running + alpha * hi
        res.first_pass = False
        if pi < prev:
            break
        keep = keep & (stretch(hi, sharpness, center) < threshold).reshape(-1).astype(np.int32)
        prev = pi
        res.iterations += 1
    res.heat = running.astype(np.float32)
    return res


class AlbefAuthors:
    """Grad-CAM + PWE + IGRS per sentence on a `TorchAlbef`, the authors' way: every pass
    runs the whole model (ViT included) forward and backward, parameter gradients included."""

    def __init__(self, model, layer: int = 8, iterations: int = 3, alpha: float = 0.2):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.layer, self.iterations, self.alpha = layer, iterations, alpha
        self.grid = (model.s.grid, model.s.grid)

    def gradcam(self, pixels_nhwc: np.ndarray, input_ids: np.ndarray,
                keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, float]:
        """cam, grad (heads, T, gh*gw) of layer `layer` and P(match), one sentence."""
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            embeds = self.model.encode_image(pixels_nhwc[None])
            ids = np.asarray(input_ids)[None]
            out = self.model.match(embeds, ids, np.ones_like(ids),
                                   None if keep is None else keep[None],
                                   grad_layer=self.layer, detach_image=False)
        logits = out["logits"][0].astype(np.float64)
        p = float(np.exp(logits[1]) / np.exp(logits).sum())
        return out["cross"][self.layer][0, :, :, 1:], out["grad"][0, :, :, 1:], p

    def heat(self, pixels_nhwc: np.ndarray, input_ids: np.ndarray, focus_ids: list[int],
             primary_ids: list[int]) -> AuthorsResult:
        n = len(input_ids)

        def run(keep):
            cam, grad, p = self.gradcam(pixels_nhwc, input_ids, keep)
            return pwe_heat_authors(cam, grad, focus_ids, primary_ids, n, self.grid), p

        return igrs_authors(run, self.grid, self.iterations, self.alpha)
