"""Shared pieces of the pipeline benchmark (bench/bench_pipeline.py): paths and parity
tolerances, process measurements (RSS, load, stats), the synthetic RefCOCO-like workload
(sentences, images, proposals, the blip-itm-base-coco architecture) and its files."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _p in (str(BENCH), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from iterprime_jax.shipped import VOCAB  # noqa: E402  (bert-base-uncased; after the path set-up)

# Against PyTorch's float32: float32 matmuls on every backend (a GPU would otherwise use TF32,
# a TPU one bf16 pass; docs/precision.md). Set before JAX is imported; worker processes
# inherit it.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

HEAT_TOL = 1e-3        # max |d| on the patch-grid IGRS maps
FLIP_TOL_P = 1e-4      # |P_i - P_prev| below this: an accept/reject decision is a float-noise tie
FLIP_TOL_STRETCH = 1e-3  # |stretch(h) - threshold| below this: a keep-mask bit is a tie


# =========================================================================== small utilities
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def mem_mib() -> dict[str, float]:
    """Current RSS, its high-water mark (VmHWM) and getrusage's ru_maxrss, MiB (Linux)."""
    return {"rss_mib": _status_kib("VmRSS") / 1024, "hwm_mib": _status_kib("VmHWM") / 1024,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reset_peak_rss() -> bool:
    """Reset VmHWM (and ru_maxrss) to the current RSS: `echo 5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def stats(xs: list[float]) -> dict[str, float]:
    xs = [float(x) for x in xs]
    if not xs:
        return {}
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs),
            "mean": statistics.fmean(xs), "max": max(xs)}


def write_record(out: Path, record: dict[str, Any]) -> Path:
    """Write a benchmark record as indented JSON (parent dirs created), say where, return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def clean_json(x: Any) -> Any:
    """numpy scalars -> Python, non-finite floats -> None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean_json(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating | float):
        return float(x) if np.isfinite(x) else None
    return x


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bucket(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


# =========================================================================== the workload
ADJ = ["tall", "short", "young", "old", "red", "blue", "green", "white", "black", "small",
       "large", "striped", "wooden", "smiling"]
NOUN = ["man", "woman", "boy", "girl", "dog", "cat", "horse", "car", "bus", "chair", "table",
        "umbrella", "bike", "elephant", "giraffe", "sheep", "person", "truck"]
PLURAL = ["men", "women", "kids", "dogs", "cars", "people", "zebras"]
CLOTHES = ["shirt", "jacket", "hat", "coat", "dress", "helmet"]
PREP = ["next to", "behind", "in front of", "on the left of", "near", "on the right of",
        "under", "beside"]
SIDE = ["on the left", "on the right", "in the middle", "at the back", "in the corner"]


def make_sentence(rng: np.random.Generator) -> str:
    """A RefCOCO-like expression of 8-12 words."""
    while True:
        noun = rng.choice(PLURAL) if rng.random() < 0.2 else rng.choice(NOUN)
        words = ["the", str(rng.choice(ADJ)), str(noun)]
        if rng.random() < 0.6:
            words += ["in", "a", str(rng.choice(ADJ)), str(rng.choice(CLOTHES))]
        words += str(rng.choice(PREP)).split() + ["the"]
        if rng.random() < 0.5:
            words.append(str(rng.choice(ADJ)))
        words.append(str(rng.choice(NOUN)))
        if rng.random() < 0.5:
            words += str(rng.choice(SIDE)).split()
        if 8 <= len(words) <= 12:
            return " ".join(words)


def make_image(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = hw
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(5):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(20, h / 3), rng.uniform(20, w / 3)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        img[inside] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_proposals(rng: np.random.Generator, hw: tuple[int, int], n: int) -> np.ndarray:
    """n class-agnostic blob masks: mostly 1 ellipse, some 2-3, a few of 14 dots (> 12
    components, never a candidate)."""
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        u = rng.random()
        k, rmax = (1, 200) if u < 0.7 else ((int(rng.integers(2, 4)), 120) if u < 0.93
                                            else (14, 12))
        for _ in range(k):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(8, rmax), rng.uniform(8, rmax)
            out[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if not out[i].any():
            out[i, int(h / 2), int(w / 2)] = True
    return out


# blip-itm-{base,large}-coco architectures (random weights): HF `BlipConfig()` defaults with
# BERT-base's 12 text heads (the checkpoints' value; BlipTextConfig's default is 8); large has
# a ViT-L/16 vision tower.
ARCHS = {
    "base": {"text_config": {"num_attention_heads": 12}},
    "large": {"vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                                "num_hidden_layers": 24, "num_attention_heads": 16,
                                "image_size": 384, "patch_size": 16},
              "text_config": {"num_attention_heads": 12, "encoder_hidden_size": 1024}},
}


def hf_blip_config(arch: str = "base"):
    """The HF `BlipConfig` of blip-itm-`arch`-coco (ARCHS)."""
    from transformers import BlipConfig as HFBlipConfig

    return HFBlipConfig(**ARCHS[arch])


def our_config(arch: str = "base"):
    from iterprime_jax.models.blip.config import BlipConfig

    return BlipConfig.from_hf_dict(hf_blip_config(arch).to_dict())


def method_config(iterations: int):
    from iterprime_jax.config import IteRPrimEConfig

    return IteRPrimEConfig(iterations=iterations)


def build_workload(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    """Weights (torch, fixed seed) -> weights.npz; images, proposals, encoded text -> data.npz."""
    import torch
    import torch_reference as tr

    from iterprime_jax.method.language import encode_batch, load_spacy

    t0 = time.perf_counter()
    model = tr.build_model(args.seed, hf_blip_config(getattr(args, "arch", "base")))
    sd = tr.state_dict_numpy(model)
    np.savez(wd / "weights.npz", **sd)
    n_params = int(sum(v.size for k, v in sd.items() if not k.endswith("position_ids")))
    log(f"weights: {n_params / 1e6:.1f}M parameters, seed {args.seed} "
        f"({time.perf_counter() - t0:.1f}s)")

    from transformers import BertTokenizer

    tok = BertTokenizer(str(VOCAB), do_lower_case=True)
    mcfg = method_config(args.iterations)
    nlp = load_spacy(mcfg.spacy_model)
    rng = np.random.default_rng(args.seed + 100)
    n_text = max([args.sentences] + list(args.scaling))
    hw = tuple(args.image_hw)
    images = np.stack([make_image(rng, hw) for _ in range(args.images)])
    proposals = np.stack([make_proposals(rng, hw, args.proposals) for _ in range(args.images)])
    sentences = [[make_sentence(rng) for _ in range(n_text)] for _ in range(args.images)]
    encode_batch(tok, nlp, sentences[0][:2], mcfg)  # warm spaCy
    t0 = time.perf_counter()
    batches = [encode_batch(tok, nlp, s, mcfg) for s in sentences]
    parse_s = (time.perf_counter() - t0) / (args.images * n_text)
    arr = {k: np.stack([getattr(b, k) for b in batches])
           for k in ("input_ids", "attention_mask", "focus", "primary")}
    np.savez(wd / "data.npz", images=images, proposals=proposals, **arr)
    lengths = arr["attention_mask"].sum(-1)
    primaries = [[it.primary_word for it in b.items] for b in batches]
    info = {"images": args.images, "image_hw": list(hw), "sentences_per_image": args.sentences,
            "sentences_generated_per_image": n_text, "proposals_per_image": args.proposals,
            "iterations": args.iterations, "template": mcfg.template,
            "max_text_length": mcfg.max_text_length,
            "prompt_tokens": stats(lengths[:, : args.sentences].ravel().tolist()),
            "words_per_sentence": stats([len(s.split()) for ss in sentences
                                         for s in ss[: args.sentences]]),
            "spacy_model": mcfg.spacy_model,
            "spacy_wordpiece_s_per_sentence": parse_s,
            "examples": [s for s in sentences[0][:3]],
            "primary_words_image0": primaries[0][: args.sentences],
            "model": {"architecture": "blip-itm-base-coco (HF BlipConfig() defaults, "
                                      "text heads 12), random weights",
                      "parameters": n_params, "seed": args.seed,
                      "init": "N(0,0.02) matrices/embeddings/biases, LayerNorm 1+N(0,0.1) "
                              "(HF's vision init std 1e-10 is degenerate)",
                      "torch_version": torch.__version__}}
    (wd / "sentences.json").write_text(json.dumps(sentences))
    del model, sd
    return info


def load_data(wd: Path) -> dict[str, np.ndarray]:
    with np.load(wd / "data.npz") as z:
        return {k: z[k] for k in z.files}


def text_rows(data: dict[str, np.ndarray], i: int, n: int, bucketed: bool = True
              ) -> tuple[np.ndarray, ...]:
    """The first `n` sentences of image `i`: (n, T) ids, mask, focus, primary; with
    `bucketed`, cut to the library's text-length bucket (`pipeline.text_length_bucket`), as
    `segment_batch` does; else padded to max_text_length."""
    rows = tuple(data[k][i, :n] for k in ("input_ids", "attention_mask", "focus", "primary"))
    if not bucketed:
        return rows
    from iterprime_jax.method.pipeline import text_length_bucket

    tl = text_length_bucket(rows[1], rows[1].shape[1])
    return tuple(a[:, :tl] for a in rows)


# =========================================================================== ours (JAX)
