"""The evaluator on synthetic RefCOCO-sized images with proposals computed on the fly.

    python bench/device_eval.py [--images 200] [--smoke] [--out FILE]

Random weights (nothing is downloaded): BLIP ITM at blip-itm-large-coco size (ViT-L/16 at
384, BERT-base text) and Mask2Former Swin-L (200 queries, the authors' 800/1333 rule); with
`--smoke` tiny models of both, for a CPU check of the script. The split: `--images` images of
RefCOCO sizes (480-640 x 360-640), 1-15 sentences each over 1-3 refs, expressions of 1-20
words; the evaluator's own loop (`evaluation.runner.run_batches`: prefetching Loader,
proposals from a `Proposer`, `Device` steps). Reports images/s and sentences/s of the steady
part (after the first batch), the first batch's wall time (compilation included), compilations
of the eval step, and peak memory (device `peak_bytes_in_use` where the backend reports it,
else the process's peak RSS). Writes one JSON record with the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# Against PyTorch's float32: float32 matmuls on every backend (a GPU would otherwise use TF32,
# a TPU one bf16 pass; docs/precision.md). Set before JAX is imported; worker processes
# inherit it.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
WORDS = ("man", "woman", "dog", "car", "red", "blue", "left", "right", "tall", "small", "the",
         "on", "near", "big", "chair", "table", "green", "white", "old", "young", "shirt")


def blip_config(smoke: bool) -> Any:
    from iterprime_jax.models.blip.config import BlipConfig, TextConfig, VisionConfig

    if smoke:
        return BlipConfig(
            vision=VisionConfig(image_size=64, patch_size=16, hidden_size=32,
                                intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4),
            text=TextConfig(vocab_size=30524, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=64, encoder_hidden_size=32),
            projection_dim=16)
    return BlipConfig(
        vision=VisionConfig(image_size=384, patch_size=16, hidden_size=1024,
                            intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16),
        text=TextConfig(vocab_size=30524, hidden_size=768, intermediate_size=3072,
                        num_hidden_layers=12, num_attention_heads=12,
                        max_position_embeddings=512, encoder_hidden_size=1024),
        projection_dim=256)


def mask2former(smoke: bool) -> Any:
    import jax
    from bench_mask2former import ARCHS

    from iterprime_jax.models.mask2former import Mask2FormerConfig, SwinConfig, abstract_params

    swin, m2f = ARCHS["tiny" if smoke else "swin-l"]
    cfg = Mask2FormerConfig(backbone=SwinConfig(**swin), **m2f)
    rng = np.random.default_rng(0)

    def fill(x: Any) -> np.ndarray:
        if x.ndim == 1:
            return np.ones(x.shape, np.float32) + 0.02 * rng.standard_normal(x.shape, np.float32)
        return 0.02 * rng.standard_normal(x.shape, np.float32)

    from iterprime_jax.models.loaded import ProposerModel
    from iterprime_jax.placement import place_params

    params = place_params(jax.tree_util.tree_map(fill, abstract_params(cfg)))
    return ProposerModel(config=cfg, params=params, path=Path("random-swin-l"))


def synthetic_split(n_images: int, seed: int = 0) -> tuple[list[Any], Any]:
    """ImageMeta list + in-memory sources (what `evaluation.index` gives the runner)."""
    from iterprime_jax.evaluation.index import ImageMeta, RefMeta, SplitSources

    rng = np.random.default_rng(seed)
    metas, examples, sent_id = [], [], 0
    for k in range(n_images):
        h, w = int(rng.integers(360, 641)), int(rng.integers(480, 641))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        n_sent = int(rng.integers(1, 16))
        n_refs = min(n_sent, int(rng.integers(1, 4)))
        sizes = np.diff(np.linspace(0, n_sent, n_refs + 1).astype(int))
        refs = []
        for r, size in enumerate(sizes):
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h // 2):, rng.integers(0, w // 2):] = True
            sents = tuple(" ".join(rng.choice(WORDS, int(rng.integers(1, 21))))
                          for _ in range(size))
            refs.append(RefMeta(index=len(examples), ref_id=100 * k + r, ann_id=r,
                                sent_ids=tuple(range(sent_id, sent_id + int(size))),
                                sentences=sents))
            sent_id += int(size)
            examples.append({"image_id": k, "image": image, "mask": mask})
        metas.append(ImageMeta(position=k, image_id=k, hw=(h, w), refs=tuple(refs),
                               num_gt_proposals=0))
    return metas, SplitSources(full=examples, mask_only=examples, light=None,
                               name="synthetic-refcoco")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    from transformers import BertTokenizer

    import iterprime_jax as ij
    from iterprime_jax.buckets import bucket
    from iterprime_jax.evaluation import runner
    from iterprime_jax.evaluation.config import (
        COCO_CANVAS,
        MIN_PROPOSAL_BUCKET,
        AblationRow,
        EvalConfig,
    )
    from iterprime_jax.evaluation.device import Device, eval_step
    from iterprime_jax.evaluation.proposals import ProposalSource
    from iterprime_jax.models.blip.modeling import init_params
    from iterprime_jax.models.loading import Model
    from iterprime_jax.models.mask2former.preprocess import ProposeConfig
    from iterprime_jax.placement import place_params
    from iterprime_jax.shipped import VOCAB

    t0 = time.perf_counter()
    cfg = blip_config(args.smoke)
    params = place_params(init_params(cfg, jax.random.PRNGKey(0)))
    tok = BertTokenizer(str(VOCAB), do_lower_case=True)
    model = Model(config=cfg, params=params, tokenizer=tok, path=Path("random-blip-large"))
    m2f = mask2former(args.smoke)
    method = ij.IteRPrimEConfig(layer=cfg.text.num_hidden_layers - 1 if args.smoke else 8)
    device = Device(model)
    proposer = ij.Proposer(m2f, ProposeConfig(), max_batch=args.batch_size)
    metas, sources = synthetic_split(args.images)
    ctx = runner.Context(config=EvalConfig(), model=model, device=device, sources=sources,
                         images=metas, proposals=ProposalSource("mask2former",
                                                                proposer=proposer),
                         canvas=COCO_CANVAS, batch_size=args.batch_size, weights=Path("."))
    setup_s = time.perf_counter() - t0
    marks: list[tuple[float, int, int]] = []
    start = time.perf_counter()

    def on_batch(batch: Any, outs: list[Any]) -> None:
        marks.append((time.perf_counter(), len(batch.images), batch.sentences))

    compiled_before = eval_step._cache_size()
    runner.run_batches(ctx, metas, [AblationRow("main", method, True)], on_batch)
    first_s = marks[0][0] - start
    steady_s = marks[-1][0] - marks[0][0]
    imgs = sum(m[1] for m in marks[1:])
    sents = sum(m[2] for m in marks[1:])
    stats = jax.devices()[0].memory_stats() or {}
    q = proposer.num_queries
    n_padded = bucket(q, MIN_PROPOSAL_BUCKET)
    mean_hw = float(np.mean([m.hw[0] * m.hw[1] for m in metas]))
    transfers = {  # proposal masks only (bool = 1 byte), from the array shapes of each path
        "before": {"device_to_host": q * mean_hw,
                   "host_to_device": n_padded * COCO_CANVAS ** 2 + 5 * n_padded,
                   "path": "Proposer -> numpy (Q, H, W) -> canvas + scipy components -> "
                           "device_put"},
        "after": {"device_to_host": 0, "host_to_device": n_padded,
                  "path": "Proposer.device_masks -> canvas + components on the device "
                          "(only the (n,) validity row is sent)"}}
    return {
        "proposal_bytes_per_image": transfers,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "smoke": args.smoke, "images": len(metas),
        "sentences": sum(m.num_sentences for m in metas), "batch_size": args.batch_size,
        "canvas": COCO_CANVAS, "setup_s": setup_s,
        "first_batch_s_incl_compile": first_s,
        "steady_images_per_s": imgs / steady_s if steady_s > 0 else None,
        "steady_sentences_per_s": sents / steady_s if steady_s > 0 else None,
        "total_s": marks[-1][0] - start,
        "eval_step_compilations": eval_step._cache_size() - compiled_before,
        "peak_device_bytes_in_use": stats.get("peak_bytes_in_use"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_end": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny models (CPU check)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(BENCH))
    started = datetime.datetime.now(datetime.timezone.utc)
    rec = {"command": " ".join(["python bench/device_eval.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "date_utc": started.isoformat(timespec="seconds"),
           "loadavg_start": list(os.getloadavg()), **run(args)}
    out = args.out or (BENCH / "results" / f"device-eval-{started.strftime('%Y%m%d-%H%M')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: rec[k] for k in ("images", "sentences", "first_batch_s_incl_compile",
                                          "steady_images_per_s", "steady_sentences_per_s",
                                          "eval_step_compilations",
                                          "peak_device_bytes_in_use", "peak_rss_mib")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
