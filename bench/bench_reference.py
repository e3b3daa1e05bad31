"""The PyTorch reference side of the pipeline benchmark: runs bench/torch_reference.py (the
authors' way: a full forward + backward per sentence per pass) on the workload, timed in its
own subprocess (`worker_torch`), and its records in the layout of ours (`run_reference`)."""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    hf_blip_config,
    load_data,
    loadavg,
    log,
    mem_mib,
    reset_peak_rss,
    stats,
    text_rows,
)


def torch_device(choice: str) -> str:
    import torch

    if choice == "gpu" or (choice == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def ref_records(results: list[Any], n: int) -> dict[str, np.ndarray]:
    """RefResult list -> arrays shaped like ours (heats zero / scores NaN after the stop)."""
    grid = results[0].heat.shape
    heats = np.zeros((len(results), n, *grid), np.float32)
    scores = np.full((len(results), n), np.nan, np.float32)
    for j, r in enumerate(results):
        heats[j, : len(r.heats)] = np.stack(r.heats)
        scores[j, : len(r.scores)] = r.scores
    return {"heat": np.stack([r.heat for r in results]), "heats": heats, "scores": scores,
            "iterations": np.asarray([r.iterations for r in results]),
            "keep": np.stack([r.keep.reshape(grid) for r in results]).astype(bool),
            "index": np.asarray([r.index for r in results]),
            "has_candidate": np.asarray([r.has_candidate for r in results]),
            "up": np.stack([r.up for r in results]),
            "passes": np.asarray([r.passes for r in results])}


def run_reference(ref: Any, data: dict[str, np.ndarray], image: int, sentences: range,
                  timed: bool = False) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    import torch_reference as tr

    img, props = data["images"][image], data["proposals"][image]
    ids, am, focus, prim = text_rows(data, image, max(sentences) + 1)
    t0 = time.perf_counter()
    ncomp = tr.count_components(props)
    per_image_s = time.perf_counter() - t0
    results, times = [], []
    for j in sentences:
        sent = tr.Sentence.from_arrays(ids[j], am[j], focus[j], prim[j])
        c0, w0 = time.process_time(), time.perf_counter()
        results.append(ref.segment(img, sent, props, ncomp))
        times.append({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                      "passes": results[-1].passes})
        if timed:
            log(f"  reference image {image} sentence {j}: {times[-1]['wall_s']:.2f}s, "
                f"{results[-1].passes} passes")
    times[0]["wall_s"] += per_image_s  # count_components once per image
    return ref_records(results, ref.iterations), times


def worker_torch(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    import torch
    import torch_reference as tr

    dev = torch_device(args.device)
    data = load_data(wd)
    model = tr.build_model(args.seed, hf_blip_config(getattr(args, "arch", "base")))  # same arch
    with np.load(wd / "weights.npz") as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    ref = tr.Reference(model, iterations=args.iterations, device=dev)
    gc.collect()
    mem0 = mem_mib()
    peak_reset = reset_peak_rss()
    load0 = loadavg()
    # warm-up: one forward + backward (allocator, lazy init), untimed, with FLOPs counted
    from torch.utils.flop_counter import FlopCounterMode

    ids, am, *_ = text_rows(data, 0, 1)
    counter = FlopCounterMode(display=False)
    with counter:
        tr.gradcam_pass(ref.model, ref.hooks, data["images"][0], ids[0][am[0] > 0], None, dev)
    flops_pass = float(counter.get_total_flops())
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    recs, times, rep_wall, rep_cpu = {}, [], [], []
    for r in range(args.ref_reps):  # the same sentences each repeat
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.ref_images):
            rec, t = run_reference(ref, data, i, range(args.ref_sentences), timed=True)
            if r == 0:
                recs.update({f"{i}/{k}": v for k, v in rec.items()})
            times += t
        rep_wall.append(time.perf_counter() - w0)
        rep_cpu.append(time.process_time() - c0)
        log(f"reference: rep {r}: {rep_wall[-1]:.2f}s")
    total = sum(rep_wall)
    mem1 = mem_mib()
    np.savez(wd / "out_torch.npz", **recs)
    n = args.ref_images * args.ref_sentences
    out = {"device": dev, "torch_threads": torch.get_num_threads(),
           "sentences_timed": n, "images_timed": args.ref_images, "reps": args.ref_reps,
           "rep_wall_s": rep_wall, "rep_cpu_s": rep_cpu,
           "sentences_per_s": n / statistics.median(rep_wall),
           "sentences_per_s_basis": "sentences per repeat / median repeat wall time",
           "cpu_s_per_sentence_median_rep": statistics.median(rep_cpu) / n,
           "total_s": total,
           "latency_per_sentence_s": stats([t["wall_s"] for t in times]),
           "cpu_s_per_sentence": stats([t["cpu_s"] for t in times]),
           "passes_per_sentence": stats([t["passes"] for t in times]),
           "s_per_pass": sum(t["wall_s"] for t in times) / sum(t["passes"] for t in times),
           "memory": {"method": "VmHWM after clear_refs reset (weights loaded) and ru_maxrss "
                                "of this fresh subprocess", "peak_reset": peak_reset,
                      "rss_before_mib": mem0["rss_mib"], "peak_rss_timed_mib": mem1["hwm_mib"],
                      "ru_maxrss_mib": mem1["ru_maxrss_mib"],
                      "ru_maxrss_before_reset_mib": mem0["ru_maxrss_mib"]},
           "loadavg_start": load0, "loadavg_end": loadavg(),
           "upsample": "torch F.interpolate bicubic", "flops_per_pass": flops_pass,
           "flops_note": "torch.utils.flop_counter on one full forward+backward (matmuls, "
                         "convolutions, attention; elementwise ops not counted)",
           "prompt_tokens_first_sentence": int(am[0].sum())}
    if dev == "cuda":
        out["memory"]["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out
