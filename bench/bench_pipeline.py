"""End-to-end throughput of iterprime_jax against a PyTorch reference run the authors' way.

    python bench/bench_pipeline.py [--quick] [--device auto|cpu|gpu] [--out FILE]

(No arguments: the default run, a few minutes on a 2-core CPU; it passes on a fresh clone.)

Same machine, same random weights at the blip-itm-base-coco architecture (built once in
PyTorch with a fixed seed and converted in memory with `iterprime_jax.models.convert`), same
images,
sentences and proposals (a RefCOCO-like load: images of 480x640, 7 sentences each, 20 mask
proposals each, 3 IGRS passes, the prompt template, PWE masks from spaCy + the bert-base-uncased
WordPiece vocab).

(a) reference (bench/torch_reference.py): transformers `BlipForImageTextRetrieval`, hooks on the
    layer-8 cross-attention probabilities, a FULL forward (image encoder included) and
    `logit.backward()` (parameters requiring grad) per sentence per pass, eager, one sample at a
    time; PWE / IGRS / selection ported to torch+numpy.
(b) ours: per image `encode_image_jit` once + `segment_core_jit` over the image's sentences
    (the library's `segment_batch` path minus the spaCy parse, which both share).

Order: the parent process builds the weights and the data, then checks that both
implementations give the same patch-grid IGRS maps (max |d| < 1e-3), accepted-pass counts and
selections BEFORE anything is timed. Random weights stop after pass 0 on every sentence, so a
second check runs the shipped small model (weights/shapesref-itm, mapped onto a torch BLIP) on
the first ShapesRef val scenes plus the first scenes where the library accepts a later pass
(found by scanning val with the library, bench/shipped_workload.py): it reports how many
sentences had 1, 2 and 3 accepted passes and fails unless some had more than one.
IGRS stops computing once every sentence of an image has stopped: the record gives the passes
computed per sentence on both sides (`passes_computed_per_sentence`).
Timing runs in fresh subprocesses (peak RSS per process: /proc/self/status VmHWM reset through
/proc/self/clear_refs just before the timed section, and getrusage's ru_maxrss over the whole
process); their outputs are checked again before the JSON is written. Results: a printed table
and bench/results/<device>-<date>.json (with the command that made it); `speedup` is the ratio
of the median sentences/s over >= 3 repeats on each side (`speedup_basis: "median"`).

This file is the harness (ours, parity, timed subprocesses, the report); the workload and
measurements are in bench/bench_common.py, the PyTorch reference runner in
bench/bench_reference.py.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import (
    BENCH,
    FLIP_TOL_P,
    FLIP_TOL_STRETCH,
    HEAT_TOL,
    ROOT,
    bucket,
    build_workload,
    clean_json,
    hf_blip_config,
    load_data,
    loadavg,
    log,
    mem_mib,
    method_config,
    our_config,
    reset_peak_rss,
    stats,
    text_rows,
)
from bench_reference import run_reference, torch_device, worker_torch


def jax_setup(wd: Path, cfg: Any) -> Any:
    import jax

    from iterprime_jax.models.blip.convert import convert_state_dict

    with np.load(wd / "weights.npz") as z:
        sd = {k: z[k] for k in z.files}
    params = convert_state_dict(sd, cfg)
    del sd
    params = jax.device_put(params)
    jax.block_until_ready(params)
    gc.collect()
    return params


def _cost(compiled: Any) -> dict[str, float]:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {"flops": float(ca.get("flops", float("nan"))),
            "bytes_accessed": float(ca.get("bytes accessed", float("nan")))}


class Ours:
    """The library's per-image path: prepare_image -> encode_image_jit -> segment_core_jit,
    ahead-of-time compiled so that compile time is measured on its own."""

    def __init__(self, params: Any, cfg: Any, mcfg: Any):
        self.params, self.cfg, self.mcfg = params, cfg, mcfg
        self.compiled: dict[Any, Any] = {}
        self.compile_s: dict[str, float] = {}
        self.costs: dict[str, dict[str, float]] = {}

    def _get(self, name: str, key: Any, lower: Any) -> Any:
        if key not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[key] = lower().compile()
            self.compile_s[name] = time.perf_counter() - t0
            self.costs[name] = _cost(self.compiled[key])
        return self.compiled[key]

    def encoder(self, pixels: np.ndarray) -> Any:
        from iterprime_jax.method.pipeline import encode_image_jit

        return self._get(f"encode_image[{pixels.shape[0]}]", ("enc", self.cfg, pixels.shape),
                         lambda: encode_image_jit.lower(self.params, self.cfg, pixels))

    def core(self, canvas: int, args: Any) -> Any:
        import jax

        from iterprime_jax.method.pipeline import segment_core_jit

        b, t = args.text.input_ids.shape
        key = ("core", self.cfg, self.mcfg, canvas) + tuple(
            np.shape(a) for a in jax.tree_util.tree_leaves(args))
        n = args.proposals.masks.shape[0]
        return self._get(f"segment_core[B={b},T={t},N={n},canvas={canvas}]", key,
                         lambda: segment_core_jit.lower(self.params, self.cfg, self.mcfg,
                                                        canvas, args))

    def run_image(self, image: np.ndarray, proposals: np.ndarray, text: tuple[np.ndarray, ...],
                  text_len: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """All sentences of one image. text: (S, T) arrays; text_len: keep only the first
        text_len token positions (trailing padding only)."""
        import jax

        from iterprime_jax.method.pipeline import CoreInputs, TextArrays, prepare_image

        s = text[0].shape[0]
        t0 = time.perf_counter()
        prep = prepare_image(image, self.cfg, proposals)
        idx = np.concatenate([np.arange(s), np.zeros(bucket(s) - s, int)])
        rows = tuple(a[idx] if text_len is None else a[idx, :text_len] for a in text)
        px = prep.pixels[None]
        t1 = time.perf_counter()
        enc = self.encoder(px)
        t2 = time.perf_counter()
        emb = enc(self.params, px)
        emb.block_until_ready()
        t3 = time.perf_counter()
        args = CoreInputs(emb, TextArrays(*rows), np.asarray(prep.hw, np.int32),
                          prep.proposal_arrays)
        core = self.core(prep.canvas, args)
        t4 = time.perf_counter()
        out = jax.device_get(core(self.params, args))
        t5 = time.perf_counter()
        h, w = prep.hw
        rec = {"heat": out.igrs.heat[:s], "heats": out.igrs.heats[:s],
               "scores": out.igrs.scores[:s], "iterations": out.igrs.iterations[:s],
               "keep": out.igrs.keep[:s], "index": out.index[:s],
               "has_candidate": out.has_candidate[:s], "up": out.heat[:s, :h, :w]}
        # passes the loop ran for this image's batch (every row runs them)
        passes = int(np.max(np.sum(~np.isnan(out.igrs.scores), axis=1)))
        timing = {"passes_computed": passes, "host_prep_s": t1 - t0, "encode_s": t3 - t2,
                  "core_s": t5 - t4, "compile_s": (t2 - t1) + (t4 - t3),
                  "total_s": t5 - t0 - (t2 - t1) - (t4 - t3)}
        return rec, timing


# =========================================================================== reference (torch)


# =========================================================================== parity
def compare(ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], iterations: int,
            mcfg: Any, check_up: bool = True) -> dict[str, Any]:
    """Per sentence: same accepted passes, same keep-mask, IGRS maps within HEAT_TOL, same
    selection. A decision that differs at a float-noise tie (margins below FLIP_TOL_*) is
    reported as a flip (maps compared up to it), anything else is a failure."""
    import torch_reference as tr

    n_s = ref["heat"].shape[0]
    report: dict[str, Any] = {"sentences": n_s, "flips": [], "failures": [],
                              "selection_ties": []}
    max_heat, max_final, max_score, max_up = 0.0, 0.0, 0.0, 0.0
    min_p_margin, min_k_margin = np.inf, np.inf
    for j in range(n_s):
        passes = int(np.sum(~np.isnan(ref["scores"][j])))
        # decision margins of the reference run
        p_margin, k_margin = np.inf, np.inf
        prev = ref["scores"][j, 0]
        hmaps = [ref["heats"][j, 0]]
        for i in range(1, passes):
            p_margin = min(p_margin, abs(float(ref["scores"][j, i] - prev)))
            if ref["scores"][j, i] >= prev:
                prev = ref["scores"][j, i]
                hmaps.append(ref["heats"][j, i])
        for h in hmaps[: iterations - 1]:
            st = tr.stretch(h, mcfg.stretch_sharpness, mcfg.stretch_center)
            k_margin = min(k_margin, float(np.min(np.abs(st - mcfg.mask_threshold))))
        min_p_margin, min_k_margin = min(min_p_margin, p_margin), min(min_k_margin, k_margin)
        same_iter = int(ref["iterations"][j]) == int(ours["iterations"][j])
        same_keep = bool(np.array_equal(ref["keep"][j], ours["keep"][j]))
        ours_passes = int(np.sum(~np.isnan(ours["scores"][j])))
        upto = min(passes, ours_passes)
        if not (same_iter and same_keep and passes == ours_passes):
            # find the first pass whose inputs differ: compare maps only before it
            diverge = 1
            while diverge < upto and abs(float(ref["scores"][j, diverge]
                                               - ours["scores"][j, diverge])) < 1e-4:
                diverge += 1
            upto = diverge
            entry = {"sentence": j, "iterations_ref": int(ref["iterations"][j]),
                     "iterations_ours": int(ours["iterations"][j]), "p_margin": p_margin,
                     "keep_margin": k_margin, "passes_compared": upto}
            if p_margin < FLIP_TOL_P or k_margin < FLIP_TOL_STRETCH:
                report["flips"].append(entry)
            else:
                report["failures"].append({**entry, "why": "IGRS decision differs"})
        d = float(np.max(np.abs(ref["heats"][j, :upto] - ours["heats"][j, :upto])))
        max_heat = max(max_heat, d)
        max_score = max(max_score, float(np.max(np.abs(ref["scores"][j, :upto]
                                                       - ours["scores"][j, :upto]))))
        if d >= HEAT_TOL:
            report["failures"].append({"sentence": j, "why": f"pass maps differ by {d:.2e}"})
        if same_iter and same_keep and passes == ours_passes:
            df = float(np.max(np.abs(ref["heat"][j] - ours["heat"][j])))
            max_final = max(max_final, df)
            if df >= HEAT_TOL:
                report["failures"].append({"sentence": j, "why": f"final map differs {df:.2e}"})
            if check_up:
                max_up = max(max_up, float(np.max(np.abs(ref["up"][j] - ours["up"][j]))))
            if int(ref["index"][j]) != int(ours["index"][j]):
                tie = _selection_tie(ref["up"][j], ours["up"][j]) if check_up else False
                entry = {"sentence": j, "index_ref": int(ref["index"][j]),
                         "index_ours": int(ours["index"][j])}
                (report["selection_ties"] if tie else report["failures"]).append(
                    {**entry, "why": "selection differs"})
    report.update({"max_abs_pass_heat": max_heat, "max_abs_final_heat": max_final,
                   "max_abs_p_match": max_score, "max_abs_upsampled_heat": max_up,
                   "min_decision_margin_p": min_p_margin,
                   "min_decision_margin_stretch": min_k_margin,
                   "iterations_ref": ref["iterations"].tolist(),
                   "iterations_ours": ours["iterations"].tolist(),
                   "index_ref": ref["index"].tolist(), "index_ours": ours["index"].tolist(),
                   "ok": not report["failures"]})
    return report


def _selection_tie(up_ref: np.ndarray, up_ours: np.ndarray) -> bool:
    """The seed set (argmax pixels) is ambiguous at float noise in either map."""
    return bool(np.max(up_ref) - up_ref.ravel()[np.argmax(up_ours)] < 1e-5
                and np.argmax(up_ref) != np.argmax(up_ours))


def matmul_gflops(n: int, reps: int = 5) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return {"n": n, "best_s": min(ts), "gflops_best": 2 * n**3 / min(ts) / 1e9,
            "gflops_median": 2 * n**3 / statistics.median(ts) / 1e9}


def _time_call(fn: Any, *args: Any, reps: int = 2) -> list[float]:
    import jax

    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def component_costs(ours: Ours, data: dict[str, np.ndarray], args: argparse.Namespace
                    ) -> dict[str, Any]:
    """Compile the stages of segment_core separately (one IGRS pass, a text forward, the
    whole IGRS, upsample + selection) for FLOPs and a time breakdown on image 0."""
    import functools

    import jax
    import jax.numpy as jnp

    from iterprime_jax.method import pipeline as pl
    from iterprime_jax.method.gradcam import gradcam_from_embeds
    from iterprime_jax.method.heat import heat_map
    from iterprime_jax.method.select import select_proposal
    from iterprime_jax.models.blip.modeling import match_from_embeds

    cfg, mcfg, params = ours.cfg, ours.mcfg, ours.params
    s = args.sentences
    prep = pl.prepare_image(data["images"][0], cfg, data["proposals"][0])
    emb = ours.encoder(prep.pixels[None])(params, prep.pixels[None])
    idx = np.concatenate([np.arange(s), np.zeros(bucket(s) - s, int)])
    ids, am, focus, prim = (a[idx] for a in text_rows(data, 0, s))
    b = ids.shape[0]
    keep = np.ones((b, cfg.vision.num_patches), np.int32)

    def one_pass(params, emb, ids, am, focus, prim, keep):
        cam = gradcam_from_embeds(params, cfg, emb, ids, am, mcfg.layer, keep)
        heat = jax.vmap(functools.partial(heat_map, use_pwe=mcfg.use_pwe))(
            cam.attn, cam.grad, am, focus, prim)
        return heat, cam.match_prob

    def forward_only(params, emb, ids, am, keep):
        return match_from_embeds(params, cfg, emb, ids, am, keep)[0]

    def igrs_only(params, emb, ids, am, focus, prim):
        return pl.text_heatmaps(params, cfg, mcfg, emb, pl.TextArrays(ids, am, focus, prim))

    def localize(heat, hw, props, valid, ncomp):
        def one(h):
            up, region = pl.upsample_heat(h, hw, prep.canvas, mcfg)
            sel = select_proposal(up, props, valid, ncomp, mcfg.max_components)
            return up, sel.mask, sel.index
        return jax.vmap(one)(heat)

    def upsample_only(heat, hw):
        return jax.vmap(lambda h: pl.upsample_heat(h, hw, prep.canvas, mcfg)[0])(heat)

    hw = np.asarray(prep.hw, np.int32)
    heat0 = jnp.asarray(np.random.default_rng(0).random((b, *cfg.vision.grid)), jnp.float32)
    stages = {
        "igrs_one_pass_fwd_bwd_heat": (one_pass, (params, emb, ids, am, focus, prim, keep)),
        "text_forward_only_one_pass": (forward_only, (params, emb, ids, am, keep)),
        "igrs_all_passes": (igrs_only, (params, emb, ids, am, focus, prim)),
        "upsample_select": (localize, (heat0, hw, prep.proposals, prep.proposal_valid,
                                       prep.num_components)),
        "upsample_only": (upsample_only, (heat0, hw)),
    }
    out: dict[str, Any] = {"batch_rows": b, "sentences": s, "text_len": int(ids.shape[1])}
    for name, (fn, a) in stages.items():
        t0 = time.perf_counter()
        c = jax.jit(fn).lower(*a).compile()
        comp = time.perf_counter() - t0
        ts = _time_call(c, *a, reps=args.stage_reps)
        out[name] = {**_cost(c), "compile_s": comp, "time_s": stats(ts)}
        log(f"  stage {name}: {min(ts):.3f}s, {out[name]['flops'] / 1e9:.1f} GFLOP")
    return out


def worker_jax(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    import jax

    cfg = our_config(getattr(args, "arch", "base"))
    mcfg = method_config(args.iterations)
    data = load_data(wd)
    t0 = time.perf_counter()
    params = jax_setup(wd, cfg)
    load_s = time.perf_counter() - t0
    ours = Ours(params, cfg, mcfg)
    s, n_img = args.sentences, args.images
    res: dict[str, Any] = {"jax_version": jax.__version__,
                           "devices": [str(d) for d in jax.devices()],
                           "backend": jax.default_backend(), "params_load_s": load_s}
    mem0 = mem_mib()
    res["memory"] = {"peak_reset": reset_peak_rss()}
    load0 = loadavg()

    # ---- cold: compile + first image ------------------------------------------------------
    c0 = time.perf_counter()
    rec0, t_first = ours.run_image(data["images"][0], data["proposals"][0],
                                   text_rows(data, 0, s))
    res["cold"] = {"first_image_wall_s": time.perf_counter() - c0,
                   "compile_s": dict(ours.compile_s), "first_image_run_s": t_first["total_s"]}
    log(f"ours: compile {sum(ours.compile_s.values()):.1f}s, first image "
        f"{res['cold']['first_image_wall_s']:.1f}s")

    # ---- steady state: all images, reps ---------------------------------------------------
    rep_wall, rep_cpu, per_image, recs = [], [], [], {}
    for r in range(args.reps):
        c, w = time.process_time(), time.perf_counter()
        for i in range(n_img):
            rec, t = ours.run_image(data["images"][i], data["proposals"][i],
                                    text_rows(data, i, s))
            per_image.append(t)
            if r == 0:
                recs.update({f"{i}/{k}": v for k, v in rec.items()})
        rep_wall.append(time.perf_counter() - w)
        rep_cpu.append(time.process_time() - c)
        log(f"ours: rep {r}: {rep_wall[-1]:.2f}s for {n_img * s} sentences")
    mem1 = mem_mib()
    res["memory"].update({
        "method": "VmHWM after clear_refs reset (params on device) and ru_maxrss of this fresh "
                  "subprocess; includes XLA compilation", "rss_before_mib": mem0["rss_mib"],
        "peak_rss_timed_mib": mem1["hwm_mib"], "ru_maxrss_mib": mem1["ru_maxrss_mib"],
        "ru_maxrss_before_reset_mib": mem0["ru_maxrss_mib"]})
    if jax.default_backend() != "cpu":
        ms = jax.devices()[0].memory_stats() or {}
        res["memory"]["device_peak_bytes_in_use_mib"] = ms.get("peak_bytes_in_use", 0) / 2**20
    np.savez(wd / "out_jax.npz", **recs)
    n_sent = n_img * s
    med = statistics.median(rep_wall)
    res["steady"] = {
        "sentences": n_sent, "reps": args.reps, "rep_wall_s": rep_wall, "rep_cpu_s": rep_cpu,
        "passes_computed_per_sentence": stats([t["passes_computed"] for t in per_image]),
        "passes_configured": args.iterations,
        "sentences_per_s": n_sent / med,
        "sentences_per_s_basis": "sentences per repeat / median repeat wall time",
        "sentences_per_s_best": n_sent / min(rep_wall),
        "s_per_sentence": med / n_sent,
        "cpu_s_per_sentence": statistics.median(rep_cpu) / n_sent,
        "latency_per_image_batch_s": stats([t["total_s"] for t in per_image]),
        "breakdown_per_image_s": {k: stats([t[k] for t in per_image])
                                  for k in ("host_prep_s", "encode_s", "core_s")}}
    res["loadavg_main"] = [load0, loadavg()]

    # ---- FLOPs and stages -----------------------------------------------------------------
    res["compiled_costs"] = dict(ours.costs)
    res["stages"] = component_costs(ours, data, args)
    dev_kind = jax.devices()[0].platform
    res["matmul"] = matmul_gflops(args.matmul_n or (8192 if dev_kind == "gpu" else 2048))

    # ---- the same without the library's text-length bucket (padded to max_text_length) --
    if args.text_bucket:
        walls, diffs, lens = [], [], []
        for i in range(n_img):
            lens.append(int(text_rows(data, i, s)[0].shape[1]))
            rec, t = ours.run_image(data["images"][i], data["proposals"][i],
                                    text_rows(data, i, s, bucketed=False))
            walls.append(t["total_s"])
            diffs.append(float(np.max(np.abs(rec["heats"] - recs[f"{i}/heats"]))))
            same = np.array_equal(rec["iterations"], recs[f"{i}/iterations"]) and \
                np.array_equal(rec["index"], recs[f"{i}/index"])
            diffs[-1] = diffs[-1] if same else float("inf")
        res["without_text_bucket"] = {
            "text_len": mcfg.max_text_length, "bucketed_text_len": lens,
            "sentences_per_s": n_sent / sum(walls), "per_image_s": stats(walls),
            "max_abs_heat_vs_bucketed": max(diffs),
            "note": "segment_core_jit fed (B, max_text_length) arrays (trailing padding kept), "
                    "the library's behaviour before text-length buckets"}
        log(f"ours without text bucket (T={mcfg.max_text_length}): "
            f"{n_sent / sum(walls):.3f} sentences/s")

    # ---- scaling over sentences per image --------------------------------------------------
    scaling = []
    for b in args.scaling:
        walls = []
        for i in range(args.scaling_images):
            _, t = ours.run_image(data["images"][i], data["proposals"][i], text_rows(data, i, b))
            walls.append(t["total_s"])
        name = [k for k in ours.compile_s if k.startswith(f"segment_core[B={bucket(b)},")]
        scaling.append({"sentences_per_image": b, "rows": bucket(b),
                        "per_image_s": stats(walls),
                        "sentences_per_s": b / statistics.median(walls),
                        "compile_s": ours.compile_s.get(name[0]) if name else None})
        log(f"ours: {b} sentences/image: {scaling[-1]['sentences_per_s']:.3f} sentences/s")
    res["scaling_sentences"] = scaling

    # ---- bf16 compute -----------------------------------------------------------------------
    if args.bf16_images:
        ob = Ours(params, cfg.replace(dtype="bfloat16"), mcfg)
        walls, d_final, d_pass, same_it, same_idx, n = [], [], [], 0, 0, 0
        for i in range(args.bf16_images):
            ob.run_image(data["images"][i], data["proposals"][i], text_rows(data, i, s))
            rec, t = ob.run_image(data["images"][i], data["proposals"][i],
                                  text_rows(data, i, s))
            walls.append(t["total_s"])
            ref = {k[len(f"{i}/"):]: v for k, v in recs.items() if k.startswith(f"{i}/")}
            d_final += np.abs(rec["heat"] - ref["heat"]).reshape(s, -1).max(1).tolist()
            d_pass.append(float(np.abs(rec["heats"][:, 0] - ref["heats"][:, 0]).max()))
            same_it += int(np.sum(rec["iterations"] == ref["iterations"]))
            same_idx += int(np.sum(rec["index"] == ref["index"]))
            n += s
        res["bf16"] = {"images": args.bf16_images, "sentences_per_s": n / sum(walls),
                       "per_image_s": stats(walls), "compile_s": dict(ob.compile_s),
                       "max_abs_final_heat_vs_f32": max(d_final),
                       "median_abs_final_heat_vs_f32_per_sentence": statistics.median(d_final),
                       "max_abs_first_pass_heat_vs_f32": max(d_pass),
                       "same_iterations": f"{same_it}/{n}", "same_selection": f"{same_idx}/{n}"}
        log(f"ours bf16: {res['bf16']['sentences_per_s']:.3f} sentences/s, max |d| heat "
            f"{max(d_final):.3f}")
    res["loadavg_end"] = loadavg()
    return res


def worker_devices(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    """segment_images_core (vmap over images) with the image axis sharded over N devices."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from iterprime_jax.method import pipeline as pl

    n = args.n_devices
    devs = jax.devices()
    if len(devs) < n:
        return {"n_devices": n, "skipped": f"only {len(devs)} {devs[0].platform} device(s)"}
    cfg, mcfg = our_config(getattr(args, "arch", "base")), method_config(args.iterations)
    data = load_data(wd)
    params = jax_setup(wd, cfg)
    mesh = Mesh(np.asarray(devs[:n]), ("img",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("img"))
    params = jax.device_put(params, rep)
    k, s = args.device_images, args.sentences
    preps = [pl.prepare_image(data["images"][i], cfg, data["proposals"][i]) for i in range(k)]
    side = preps[0].canvas
    idx = np.concatenate([np.arange(s), np.zeros(bucket(s) - s, int)])
    text = [np.stack([text_rows(data, i, s)[j][idx] for i in range(k)]) for j in range(4)]
    host = {"pixels": np.stack([p.pixels for p in preps]),
            "hw": np.asarray([p.hw for p in preps], np.int32),
            "props": np.stack([p.proposals for p in preps]),
            "valid": np.stack([p.proposal_valid for p in preps]),
            "ncomp": np.stack([p.num_components for p in preps])}

    def step() -> Any:
        d = {key: jax.device_put(v, shard) for key, v in host.items()}
        tx = pl.TextArrays(*(jax.device_put(t, shard) for t in text))
        emb = pl.encode_image_jit(params, cfg, d["pixels"])[:, None]
        props = pl.ProposalArrays(d["props"], d["valid"], d["ncomp"])
        return jax.device_get(pl.segment_images_core(
            params, cfg, mcfg, side, pl.CoreInputs(emb, tx, d["hw"], props)))

    t0 = time.perf_counter()
    out = step()
    first = time.perf_counter() - t0
    walls = []
    for _ in range(args.device_reps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    return {"n_devices": n, "devices": [str(d) for d in devs[:n]], "images": k,
            "sentences": k * s, "first_call_s": first, "rep_wall_s": walls,
            "sentences_per_s": k * s / min(walls),
            "iterations": np.asarray(out.igrs.iterations)[:, :s].tolist(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "loadavg_end": loadavg()}


# =========================================================================== orchestration
def spawn(kind: str, args: argparse.Namespace, wd: Path, extra_env: dict[str, str] | None = None,
          extra_args: list[str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    tag = kind + ("" if not extra_args else "-" + "-".join(extra_args[1::2]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
           "--workdir", str(wd), "--result", str(wd / f"result_{tag}.json"),
           *(extra_args or [])]
    if args.device != "auto":
        cmd += ["--device", args.device]
    log(f"spawn {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {tag} failed with exit code {proc.returncode}")
    out = json.loads((wd / f"result_{tag}.json").read_text())
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def parity_check(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    """In this process, before anything is timed: reference vs ours on image 0."""
    import torch
    import torch_reference as tr

    data = load_data(wd)
    cfg, mcfg = our_config(getattr(args, "arch", "base")), method_config(args.iterations)
    n = args.parity_sentences
    model = tr.build_model(args.seed, hf_blip_config(getattr(args, "arch", "base")))
    with np.load(wd / "weights.npz") as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    ref = tr.Reference(model, iterations=args.iterations, device=torch_device(args.device))
    log(f"parity: reference on image 0, {n} sentence(s)")
    rrec, _ = run_reference(ref, data, 0, range(n), timed=True)
    ref.hooks.remove()
    del ref, model
    gc.collect()
    params = jax_setup(wd, cfg)
    orec, _ = Ours(params, cfg, mcfg).run_image(data["images"][0], data["proposals"][0],
                                                text_rows(data, 0, n))
    del params
    gc.collect()
    rep = compare(rrec, orec, args.iterations, mcfg)
    rep["image"], rep["passes_ref"] = 0, rrec["passes"].tolist()
    rep["p_match_ref"] = np.round(rrec["scores"], 6).tolist()
    log(f"parity: max |d| pass maps {rep['max_abs_pass_heat']:.2e}, final "
        f"{rep['max_abs_final_heat']:.2e}, iterations ref {rep['iterations_ref']} ours "
        f"{rep['iterations_ours']}, flips {len(rep['flips'])}, ok={rep['ok']}")
    if not rep["ok"]:
        raise SystemExit(f"PARITY FAILED (nothing timed): {json.dumps(rep['failures'])}")
    return rep


def parity_accept_branch(args: argparse.Namespace) -> dict[str, Any]:
    """Random weights stop after pass 0 on every sentence; the shipped small model on ShapesRef
    scenes accepts later passes, so this covers the moving average and the keep-mask update."""
    import shipped_workload as sw
    from bench_reference import ref_records

    log(f"parity (accept branch): shipped model, first {args.shipped_images} ShapesRef val "
        "images")
    rep = sw.shipped_parity(args.shipped_images, compare, ref_records,
                            Path(args.shipped_weights), args.shipped_accepting,
                            args.shipped_scan)
    log(f"parity (accept branch): {rep['sentences']} sentences, accepted passes "
        f"{rep['sentences_by_accepted_passes']}, max |d| maps {rep['max_abs_pass_heat']:.1e}, "
        f"same selection {rep['same_selection']}/{rep['sentences']}, ok={rep['ok']}")
    later = sum(v for k, v in rep["sentences_by_accepted_passes"].items() if int(k) > 1)
    if not rep["ok"] or rep["same_selection"] != rep["sentences"] or not later:
        raise SystemExit(f"ACCEPT-BRANCH PARITY FAILED (nothing timed): {json.dumps(rep)}")
    return rep


def check_timed_outputs(args: argparse.Namespace, wd: Path) -> dict[str, Any]:
    """The timed reference subset against the timed run of ours (same sentences)."""
    mcfg = method_config(args.iterations)
    with np.load(wd / "out_torch.npz") as zt, np.load(wd / "out_jax.npz") as zj:
        reps = []
        for i in range(args.ref_images):
            r = {k.split("/", 1)[1]: zt[k] for k in zt.files if k.startswith(f"{i}/")}
            o = {k.split("/", 1)[1]: zj[k][: args.ref_sentences] for k in zj.files
                 if k.startswith(f"{i}/")}
            reps.append(compare(r, o, args.iterations, mcfg))
    keys = ("max_abs_pass_heat", "max_abs_final_heat", "max_abs_p_match",
            "max_abs_upsampled_heat")
    out = {k: max(r[k] for r in reps) for k in keys}
    out.update({"sentences": sum(r["sentences"] for r in reps),
                "flips": sum((r["flips"] for r in reps), []),
                "selection_ties": sum((r["selection_ties"] for r in reps), []),
                "failures": sum((r["failures"] for r in reps), []),
                "iterations_ref": [r["iterations_ref"] for r in reps],
                "iterations_ours": [r["iterations_ours"] for r in reps],
                "ok": all(r["ok"] for r in reps)})
    return out


def summarize(res: dict[str, Any]) -> None:
    ref, ours = res["reference"], res["ours"]
    st = ours["stages"]
    rows = [("implementation", "sent/s", "s/sent", "CPU s/sent", "peak RSS MiB", "compile s")]
    rows.append(("torch reference (authors' way)", f"{ref['sentences_per_s']:.4f}",
                 f"{1 / ref['sentences_per_s']:.2f}",
                 f"{ref['cpu_s_per_sentence']['median']:.2f}",
                 f"{ref['memory']['peak_rss_timed_mib']:.0f}", "-"))
    rows.append((f"ours ({res['workload']['sentences_per_image']} sent/image)",
                 f"{ours['steady']['sentences_per_s']:.4f}",
                 f"{ours['steady']['s_per_sentence']:.3f}",
                 f"{ours['steady']['cpu_s_per_sentence']:.3f}",
                 f"{ours['memory']['peak_rss_timed_mib']:.0f}",
                 f"{sum(ours['cold']['compile_s'].values()):.1f}"))
    if "without_text_bucket" in ours:
        tb = ours["without_text_bucket"]
        rows.append((f"ours, text padded to T={tb['text_len']} (no bucket)",
                     f"{tb['sentences_per_s']:.4f}", f"{1 / tb['sentences_per_s']:.3f}", "-",
                     "-", "-"))
    if "bf16" in ours:
        rows.append(("ours, bf16 compute", f"{ours['bf16']['sentences_per_s']:.4f}",
                     f"{1 / ours['bf16']['sentences_per_s']:.3f}", "-", "-", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            print("  ".join("-" * x for x in w))
    print(f"\nspeedup (median sentences/s over {ours['steady']['reps']} repeats each side, ours "
          f"/ reference): {res['speedup']:.1f}x   (CPU-time ratio {res['speedup_cpu_time']:.1f}x)")
    print(f"IGRS passes computed per sentence (of {ours['steady']['passes_configured']} "
          f"configured): ours {ours['steady']['passes_computed_per_sentence']['mean']:.2f} "
          f"(every row of an image runs its batch's passes), reference "
          f"{ref['passes_per_sentence']['mean']:.2f}")
    b = ours["steady"]["breakdown_per_image_s"]
    print(f"per image: host prep {b['host_prep_s']['median']:.3f}s, image encoder "
          f"{b['encode_s']['median']:.3f}s, segment_core {b['core_s']['median']:.3f}s; "
          f"stages: one IGRS pass {st['igrs_one_pass_fwd_bwd_heat']['time_s']['min']:.3f}s "
          f"(text forward alone {st['text_forward_only_one_pass']['time_s']['min']:.3f}s), "
          f"upsample+select {st['upsample_select']['time_s']['min']:.3f}s")
    f = res["flops"]
    print(f"FLOPs/sentence: ours {f['ours_per_sentence_gflop']:.1f} GFLOP "
          f"(image share {f['image_encoder_per_sentence_gflop']:.1f}), reference "
          f"{f['reference_per_sentence_gflop']:.0f} GFLOP; matmul "
          f"{res['ours']['matmul']['gflops_best']:.1f} GFLOP/s, achieved "
          f"{100 * f['ours_achieved_fraction_of_matmul']:.0f}%")
    print("sentences/image scaling: " + ", ".join(
        f"{s['sentences_per_image']}: {s['sentences_per_s']:.3f}/s"
        for s in ours["scaling_sentences"]))
    for d in res.get("scaling_devices", []):
        if "skipped" in d:
            print(f"devices {d['n_devices']}: skipped ({d['skipped']})")
        else:
            print(f"devices {d['n_devices']} (segment_images, {d['images']} images): "
                  f"{d['sentences_per_s']:.3f} sentences/s")
    print(f"parity: max |d| IGRS maps {res['parity']['max_abs_pass_heat']:.1e} "
          f"(timed subset {res['parity_timed']['max_abs_pass_heat']:.1e}), "
          f"flips {len(res['parity']['flips']) + len(res['parity_timed']['flips'])}")
    pa = res["parity_accept_branch"]
    print(f"parity, accept branch (shipped model, {pa['sentences']} ShapesRef sentences): "
          f"sentences by accepted passes {pa['sentences_by_accepted_passes']}, max |d| maps "
          f"{pa['max_abs_pass_heat']:.1e}, upsampled {pa['max_abs_upsampled_heat']:.1e}, "
          f"same selection {pa['same_selection']}/{pa['sentences']}")
    print(f"load average during run: {res['machine']['loadavg_start']} -> "
          f"{res['machine']['loadavg_end']}  ({res['machine']['contention']})")


def flops_summary(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ours = res["ours"]
    st = ours["stages"]
    enc = [v for k, v in ours["compiled_costs"].items() if k.startswith("encode_image[1]")][0]
    core = [v for k, v in ours["compiled_costs"].items()
            if k.startswith(f"segment_core[B={bucket(args.sentences)},T=")][0]
    s, n = args.sentences, args.iterations
    per_image = (enc["flops"] + n * st["igrs_one_pass_fwd_bwd_heat"]["flops"]
                 + st["upsample_select"]["flops"])
    per_img_s = ours["steady"]["s_per_sentence"] * s
    ref_pass = res["reference"]["flops_per_pass"]
    passes = res["reference"]["passes_per_sentence"]["mean"]
    return {
        "xla_cost_analysis_raw_gflop": {"encode_image_per_image": enc["flops"] / 1e9,
                                        "segment_core_per_image_call": core["flops"] / 1e9,
                                        "igrs_all_passes": st["igrs_all_passes"]["flops"] / 1e9,
                                        "one_igrs_pass": st["igrs_one_pass_fwd_bwd_heat"]
                                        ["flops"] / 1e9,
                                        "text_forward_one_pass": st["text_forward_only_one_pass"]
                                        ["flops"] / 1e9,
                                        "upsample_select": st["upsample_select"]["flops"] / 1e9},
        "note": "XLA's cost analysis counts a while-loop body once: the IGRS while_loop runs "
                f"up to {n - 1} times, so segment_core's raw count covers 2 of {n} passes; the "
                "per-image total below is encode + n * one_pass + upsample_select (the "
                "configured passes; fewer run when every sentence stops early). Padded "
                f"rows ({bucket(s)} for {s} sentences) and padded tokens "
                f"(T={st['text_len']}) are counted: they are executed.",
        "ours_per_image_gflop": per_image / 1e9,
        "ours_per_sentence_gflop": per_image / s / 1e9,
        "image_encoder_per_sentence_gflop": enc["flops"] / s / 1e9,
        "text_igrs_per_sentence_gflop": n * st["igrs_one_pass_fwd_bwd_heat"]["flops"] / s / 1e9,
        "ours_achieved_gflops": per_image / per_img_s / 1e9,
        "ours_achieved_fraction_of_matmul": per_image / per_img_s / 1e9
        / ours["matmul"]["gflops_best"],
        "reference_per_pass_gflop": ref_pass / 1e9,
        "reference_per_sentence_gflop": ref_pass * passes / 1e9,
        "reference_achieved_gflops": ref_pass * passes / 1e9
        / res["reference"]["latency_per_sentence_s"]["mean"],
        "reference_achieved_fraction_of_matmul": ref_pass * passes / 1e9
        / res["reference"]["latency_per_sentence_s"]["mean"] / ours["matmul"]["gflops_best"],
        "reference_note": "torch FlopCounterMode on one forward+backward pass (first sentence, "
                          "matmul-class ops only) times the mean passes per sentence; XLA's "
                          "counts for ours include elementwise ops."}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 images, reference on 2 sentences, 1 parity sentence, fewer reps, "
                         "scaling 1/8, no bf16 (marked in the JSON)")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", choices=["base", "large", "albef"], default="base",
                    help="blip-itm-base-coco or blip-itm-large-coco size (random weights); "
                         "albef: ALBEF-base at 256 px against the authors' way "
                         "(bench/bench_albef.py with --sentences, --reps, --seed, --out)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=7)
    ap.add_argument("--proposals", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--image-hw", type=int, nargs=2, default=[480, 640])
    ap.add_argument("--reps", type=int, default=3, help="steady-state repetitions of ours")
    ap.add_argument("--stage-reps", type=int, default=2)
    ap.add_argument("--ref-images", type=int, default=1)
    ap.add_argument("--ref-sentences", type=int, default=4)
    ap.add_argument("--ref-reps", type=int, default=3,
                    help="repetitions of the reference's timed sentences")
    ap.add_argument("--shipped-weights", default="weights/shapesref-itm",
                    help="trained small model for the accept-branch parity check")
    ap.add_argument("--shipped-images", type=int, default=4,
                    help="first ShapesRef val images for the accept-branch parity check")
    ap.add_argument("--shipped-accepting", type=int, default=2,
                    help="plus this many val scenes where a later IGRS pass is accepted")
    ap.add_argument("--shipped-scan", type=int, default=200,
                    help="val scenes scanned (with the library) for those")
    ap.add_argument("--parity-sentences", type=int, default=2)
    ap.add_argument("--scaling", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--scaling-images", type=int, default=2)
    ap.add_argument("--devices", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--device-images", type=int, default=2)
    ap.add_argument("--device-reps", type=int, default=2)
    ap.add_argument("--bf16-images", type=int, default=2)
    ap.add_argument("--text-bucket", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ours without the text-length bucket (T=max_text_length)")
    ap.add_argument("--matmul-n", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["torch", "jax", "devices"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n-devices", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arch == "albef":
        import bench_albef

        albef_argv = ["--sentences", str(args.sentences), "--repeats", str(args.reps),
                      "--seed", str(args.seed)]
        bench_albef.main(albef_argv + (["--out", str(args.out)] if args.out else []))
        return
    if args.quick:
        args.images = min(args.images, 2)
        args.ref_sentences = min(args.ref_sentences, 2)
        args.parity_sentences = min(args.parity_sentences, 1)
        args.reps, args.stage_reps, args.ref_reps = 3, 1, 3
        args.shipped_images = min(args.shipped_images, 2)
        args.shipped_accepting = min(args.shipped_accepting, 1)
        args.scaling, args.scaling_images = [1, 8], 1
        args.devices, args.device_images, args.device_reps = [1, 2], 2, 1
        args.bf16_images = 0
    args.ref_images = min(args.ref_images, args.images)
    args.scaling_images = min(args.scaling_images, args.images)
    args.device_images = min(args.device_images, args.images)
    args.bf16_images = min(args.bf16_images, args.images)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif args.device == "gpu":
        os.environ["JAX_PLATFORMS"] = "cuda"
    if args.worker:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        saved = json.loads((args.workdir / "args.json").read_text())
        wargs = argparse.Namespace(**{**saved, "n_devices": args.n_devices})
        fn = {"torch": worker_torch, "jax": worker_jax, "devices": worker_devices}[args.worker]
        args.result.write_text(json.dumps(clean_json(fn(wargs, args.workdir)), indent=1))
        return
    t_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    cmd = " ".join(["python bench/bench_pipeline.py",
                    *(sys.argv[1:] if argv is None else argv)])
    res: dict[str, Any] = {"command": cmd, "quick": args.quick, "config": {
        k: v for k, v in vars(args).items() if k not in ("out", "worker", "workdir", "result",
                                                         "n_devices")}}
    res["machine"] = {"date": started.isoformat(timespec="seconds"), "host": platform.node(),
                      "platform": platform.platform(), "python": platform.python_version(),
                      "cpu_count": os.cpu_count(), "loadavg_start": loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        wd = Path(tmp)
        saved = {k: v for k, v in vars(args).items()
                 if k not in ("out", "worker", "workdir", "result", "n_devices")}
        (wd / "args.json").write_text(json.dumps(saved))
        res["workload"] = build_workload(args, wd)
        res["parity"] = parity_check(args, wd)          # asserts; nothing timed before it
        res["parity_accept_branch"] = parity_accept_branch(args)
        res["reference"] = spawn("torch", args, wd)
        res["ours"] = spawn("jax", args, wd)
        res["parity_timed"] = check_timed_outputs(args, wd)
        if not res["parity_timed"]["ok"]:
            raise SystemExit("PARITY FAILED on the timed outputs: "
                             + json.dumps(res["parity_timed"]["failures"]))
        res["scaling_devices"] = []
        for n in args.devices:
            env = {}
            if res["ours"]["backend"] == "cpu":
                env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                    + f" --xla_force_host_platform_device_count={n}").strip()
            res["scaling_devices"].append(spawn("devices", args, wd, env,
                                                ["--n-devices", str(n)]))
    res["speedup"] = res["ours"]["steady"]["sentences_per_s"] / res["reference"]["sentences_per_s"]
    res["speedup_basis"] = "median"
    res["speedup_note"] = (f"median over {args.reps} repeats of ours / median over "
                           f"{args.ref_reps} repeats of the reference, sentences/s")
    res["speedup_cpu_time"] = (res["reference"]["cpu_s_per_sentence_median_rep"]
                               / res["ours"]["steady"]["cpu_s_per_sentence"])
    res["flops"] = flops_summary(res, args)
    res["machine"].update({
        "loadavg_end": loadavg(), "jax_devices": res["ours"]["devices"],
        "jax_backend": res["ours"]["backend"], "torch_device": res["reference"]["device"],
        "torch_threads": res["reference"]["torch_threads"],
        "contention": (None if max(loadavg() + res["machine"]["loadavg_start"] + [0.0]) < 1.0
                       else "load average >= 1 at the start or the end (at the end it counts "
                            "the benchmark's own processes; at the start, jobs that ran just "
                            "before): timings are best-of-N / medians"),
        "bench_wall_s": time.perf_counter() - t_start})
    backend = res["ours"]["backend"]
    out = args.out or (BENCH / "results" / f"{backend}-{started.strftime('%Y%m%d-%H%M')}"
                       f"{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = clean_json(res)
    out.write_text(json.dumps(res, indent=1) + "\n")
    summarize(res)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
