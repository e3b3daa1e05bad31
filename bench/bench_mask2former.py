"""Mask2Former proposals per second at Swin-L size: ours (JAX) against transformers (PyTorch).

    python bench/bench_mask2former.py [--cases 512,800] [--repeats 3] [--batch 1]
        [--dtype float32|bfloat16] [--host-devices N] [--forward] [--skip-torch] [--out FILE]

Architecture: the authors' proposal network, Mask2Former Swin-L COCO panoptic (embed 192,
depths 2/2/18/2, heads 6/12/24/48, window 12, 200 queries, 133 classes, 6 encoder / 10 decoder
layers), random weights: ours from `abstract_params` filled with seeded numpy normals (no torch
model is built for it), PyTorch's its own `Mask2FormerForUniversalSegmentation(config)`.
Numerical agreement of the two implementations is the job of tests/test_mask2former_parity.py
and tests/test_propose.py; here the weights differ and only time and memory are compared.

Cases (both sides do the whole proposal path, image uint8 -> (200, H, W) bool masks: resize,
normalise, pad, forward, upsample, crop, resize, sigmoid > 0.35):
  512: a 512x512 image with short side 512 (network input 512x512);
  800: a 480x640 image by the authors' rule (short side 800, long <= 1333: network input
       800x1067 padded to 800x1088).
PyTorch runs the authors' rule as detectron2 does it (tests/test_propose.py's torch_preprocess
and torch_postprocess around the HF model, `torch.inference_mode`). Each side runs in its own
subprocess, one after the other in the same invocation: per case one untimed call (for JAX:
trace + compile + run, reported as compile time) then `--repeats` timed calls (median
reported), and with --forward the forward pass alone likewise. Peak memory: VmHWM of the
worker process, reset before each case. The machine load (`uptime`) is recorded before and
after: the CPU is shared, so absolute numbers move with it; the ratio is what the record is
for.

Writes a table to stdout and bench/results/m2f-<device>-<date>.json (with the command).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_common import mem_mib, reset_peak_rss, write_record  # noqa: E402  (bench/ is on sys.path)

SWIN_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)
M2F = dict(num_queries=200, num_labels=133, decoder_layers=10, encoder_layers=6,
           hidden_dim=256, feature_size=256, mask_feature_size=256, dim_feedforward=2048,
           encoder_feedforward_dim=1024)
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)
TINY_M2F = dict(M2F, decoder_layers=2, encoder_layers=1, hidden_dim=32, feature_size=32,
                mask_feature_size=32, dim_feedforward=64, encoder_feedforward_dim=64)
ARCHS = {"swin-l": (SWIN_L, M2F), "tiny": (TINY_SWIN, TINY_M2F)}  # tiny: smoke test only
# case -> (image (H, W), short edge, max size)
CASES = {"512": ((512, 512), 512, 512), "800": ((480, 640), 800, 1333)}


# --------------------------------------------------------------------------- utilities
def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"loadavg {os.getloadavg()}"


def timed(fn: Any, repeats: int, after_first: Any = None) -> tuple[float, list[float]]:
    """(first call seconds, timed repeats); `after_first()` runs between the two."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if after_first is not None:
        after_first()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def images_for(case: str, batch: int) -> list[np.ndarray]:
    (h, w), _, _ = CASES[case]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(batch)]


class Peaks:
    """Peak RSS of a case: over the whole case (first call included: for JAX, tracing and
    compilation) and over the timed repeats only (reset after the first call: the steady
    state a long evaluation runs in)."""

    def __init__(self) -> None:
        self.first_mib = 0.0
        reset_peak_rss()

    def after_first(self) -> None:
        self.first_mib = mem_mib()["hwm_mib"]
        reset_peak_rss()

    def record(self) -> dict[str, float]:
        steady = mem_mib()["hwm_mib"]
        return {"peak_rss_mib": max(self.first_mib, steady), "steady_peak_rss_mib": steady}


def case_record(case: str, batch: int, first: float, times: list[float],
                fwd_first: float | None, fwd_times: list[float] | None, input_hw: tuple[int, int],
                peaks: dict[str, float], queries: int) -> dict[str, Any]:
    med = statistics.median(times)
    return {"case": case, "image_hw": list(CASES[case][0]), "input_hw": list(input_hw),
            "batch": batch, "first_call_s": first, "times_s": times, "median_s": med,
            "images_per_s": batch / med, "proposals_per_s": batch * queries / med,
            "forward_first_call_s": fwd_first, "forward_times_s": fwd_times,
            "forward_median_s": statistics.median(fwd_times) if fwd_times else None,
            **peaks}


# --------------------------------------------------------------------------- workers
def worker_jax(args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax

    from iterprime_jax.models.loaded import ProposerModel
    from iterprime_jax.models.mask2former import (
        Mask2FormerConfig,
        SwinConfig,
        abstract_params,
        mask2former_forward_jit,
    )
    from iterprime_jax.models.mask2former.preprocess import ProposeConfig, preprocess
    from iterprime_jax.models.mask2former.propose import Proposer

    swin, m2f = ARCHS[args.arch]
    cfg = Mask2FormerConfig(backbone=SwinConfig(**swin), dtype=args.dtype, **m2f)
    rng = np.random.default_rng(0)

    def fill(x: Any) -> jax.Array:  # straight to the device: the parameters are held once
        if x.ndim == 1:
            a = np.ones(x.shape, np.float32) + 0.02 * rng.standard_normal(x.shape, np.float32)
        else:
            a = 0.02 * rng.standard_normal(x.shape, np.float32)
        return jax.device_put(a)

    model = ProposerModel(config=cfg, params=jax.tree_util.tree_map(fill, abstract_params(cfg)),
                          path=Path(f"random-{args.arch}"))
    out = []
    for case in args.cases.split(","):
        _, short, max_size = CASES[case]
        images = images_for(case, args.batch)
        proposer = Proposer(model, ProposeConfig(short_edge=short, max_size=max_size),
                            max_batch=args.batch)
        pixels = np.stack([preprocess(im, proposer.config).pixels for im in images])
        peaks = Peaks()
        first, times = timed(lambda p=proposer, i=images: p(i), args.repeats, peaks.after_first)
        peak = peaks.record()
        fwd = lambda px=pixels, pp=proposer.params: jax.block_until_ready(  # noqa: E731
            mask2former_forward_jit(pp, cfg, px))
        ffirst, ftimes = timed(fwd, args.repeats) if args.forward else (None, None)
        rec = case_record(case, args.batch, first, times, ffirst, ftimes,
                          pixels.shape[1:3], peak, cfg.num_queries)
        rec["compile_s"] = first - statistics.median(times)
        rec["xla_gflops"] = step_gflops(proposer, images[0])
        if ftimes:
            rec["forward_compile_s"] = ffirst - statistics.median(ftimes)
        rec["devices"] = len(proposer.devices)
        out.append(rec)
        print(json.dumps({"progress": rec}), file=sys.stderr, flush=True)
    return out


def step_gflops(proposer: Any, image: np.ndarray) -> float:
    """XLA's FLOP count of the jitted proposal step (forward + postprocessing) for `image`."""
    from iterprime_jax.models.mask2former.propose import propose_step

    call = proposer.calls([image])[0]
    cost = propose_step.lower(*call.args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) / 1e9


def worker_torch(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    import transformers

    from tests.test_propose import torch_postprocess, torch_preprocess

    torch.manual_seed(0)
    swin, m2f = ARCHS[args.arch]
    bb = transformers.SwinConfig(image_size=384, drop_path_rate=0.0,
                                 out_features=["stage1", "stage2", "stage3", "stage4"],
                                 **{k: list(v) if isinstance(v, tuple) else v
                                    for k, v in swin.items()})
    hc = transformers.Mask2FormerConfig(backbone_config=bb, **m2f)
    model = transformers.Mask2FormerForUniversalSegmentation(hc).eval()
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    dt = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    out = []
    for case in args.cases.split(","):
        _, short, max_size = CASES[case]
        images = images_for(case, args.batch)

        def run(images: list[np.ndarray] = images, short: int = short,
                max_size: int = max_size) -> list[np.ndarray]:
            with torch.inference_mode():
                preps = [torch_preprocess(im, short, max_size) for im in images]
                ph = max(p[0].shape[2] for p in preps)
                pw = max(p[0].shape[3] for p in preps)
                x = torch.cat([torch.nn.functional.pad(p[0], (0, pw - p[0].shape[3], 0,
                                                              ph - p[0].shape[2]))
                               for p in preps])
                logits = model(pixel_values=x.to(dt)).masks_queries_logits.float()
                return [torch_postprocess(logits[k], (ph, pw), preps[k][1], im.shape[:2])[1]
                        for k, im in enumerate(images)]

        x0, _ = torch_preprocess(images[0], short, max_size)
        xb = x0.expand(len(images), -1, -1, -1).contiguous().to(dt)

        def fwd(xb: Any = xb) -> Any:
            with torch.inference_mode():
                return model(pixel_values=xb).masks_queries_logits

        peaks = Peaks()
        first, times = timed(run, args.repeats, peaks.after_first)
        peak = peaks.record()
        ffirst, ftimes = timed(fwd, args.repeats) if args.forward else (None, None)
        rec = case_record(case, args.batch, first, times, ffirst, ftimes,
                          tuple(x0.shape[2:]), peak, hc.num_queries)
        rec["threads"] = torch.get_num_threads()
        out.append(rec)
        print(json.dumps({"progress": rec}), file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------- driver
def gemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` float32 (n, n) @ (n, n) throughput of each side's matmul library (XLA
    and PyTorch, each with its default threads), GFLOP/s: the ceiling of a matmul-bound model
    like Swin-L, the same on both sides only if the libraries are equally fast."""
    import jax
    import jax.numpy as jnp
    import torch

    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    mm = jax.jit(jnp.matmul)
    ja = jax.device_put(a)
    ta = torch.from_numpy(a)
    out = {}
    for side, fn in (("jax", lambda: jax.block_until_ready(mm(ja, ja))),
                     ("torch", lambda: torch.matmul(ta, ta))):
        fn()
        _, times = timed(fn, repeats)
        out[side] = 2 * n ** 3 / min(times) / 1e9
    return out


def run_worker(side: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", side, "--cases", args.cases,
           "--repeats", str(args.repeats), "--batch", str(args.batch), "--dtype", args.dtype,
           "--arch", args.arch] + (["--forward"] if args.forward else [])
    env = dict(os.environ)
    if side == "jax" and args.host_devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={args.host_devices}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{side}] done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return res


def table(jax_res: list[dict[str, Any]], torch_res: list[dict[str, Any]] | None) -> str:
    head = (f"{'case':<5} {'input':>9} {'side':<6} {'median s':>9} {'img/s':>7} "
            f"{'prop/s':>8} {'fwd s':>7} {'compile s':>9} {'peak MiB':>9} {'steady MiB':>10} "
            f"{'speedup':>8}")
    rows = [head, "-" * len(head)]
    by_case = {r["case"]: r for r in (torch_res or [])}
    for r in jax_res:
        t = by_case.get(r["case"])
        for side, x in (("jax", r), ("torch", t)):
            if x is None:
                continue
            sp = f"{t['median_s'] / r['median_s']:.2f}x" if (t and side == "jax") else ""
            comp = f"{x['compile_s']:.1f}" if "compile_s" in x else "-"
            fwd = "-" if x["forward_median_s"] is None else f"{x['forward_median_s']:.2f}"
            rows.append(f"{r['case']:<5} {'x'.join(map(str, x['input_hw'])):>9} {side:<6} "
                        f"{x['median_s']:>9.2f} {x['images_per_s']:>7.3f} "
                        f"{x['proposals_per_s']:>8.1f} {fwd:>7} "
                        f"{comp:>9} {x['peak_rss_mib']:>9.0f} "
                        f"{x['steady_peak_rss_mib']:>10.0f} {sp:>8}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="512,800", help="comma list of: " + ",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="images per call")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--host-devices", type=int, default=1,
                    help="JAX side: shard the image axis over N host (CPU) devices")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--forward", action="store_true",
                    help="also time the forward pass alone (doubles the run time)")
    ap.add_argument("--arch", default="swin-l", choices=tuple(ARCHS),
                    help="swin-l (the record); tiny: a smoke test of this script")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    bad = [c for c in args.cases.split(",") if c not in CASES]
    if bad or args.repeats < 3 and args.worker is None:
        ap.error(f"unknown cases {bad}" if bad else "--repeats must be >= 3 (median)")
    if args.worker:
        res = worker_jax(args) if args.worker == "jax" else worker_torch(args)
        print(json.dumps(res))
        return 0
    import jax
    import torch
    import transformers

    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load_before = uptime()
    t0 = time.perf_counter()
    gemm = gemm_gflops()
    jax_res = run_worker("jax", args)
    torch_res = None if args.skip_torch else run_worker("torch", args)
    load_after = uptime()
    print(table(jax_res, torch_res))
    speedup = ({r["case"]: t["median_s"] / r["median_s"]
                for r, t in zip(jax_res, torch_res, strict=True)} if torch_res else None)
    device = jax.devices()[0].platform
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    record = {
        "command": command,
        "date_utc": stamp,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "uptime_before": load_before, "uptime_after": load_after,
                    "note": "CPU shared with other jobs; see the load averages"},
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "architecture": {"name": args.arch,
                         "swin": {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in ARCHS[args.arch][0].items()},
                         "mask2former": ARCHS[args.arch][1]},
        "settings": {"repeats": args.repeats, "batch": args.batch, "dtype": args.dtype,
                     "host_devices": args.host_devices, "threshold": 0.35},
        "matmul_gflops_2048": gemm,
        "matmul_note": "best of 5 float32 2048^3 matmuls per library in the driver process "
                       "before the workers; both sides run the same FLOPs (same architecture), "
                       "so the ratio of these bounds the speedup of the matmul-bound forward",
        "ours": jax_res, "pytorch": torch_res,
        "speedup_full_path": speedup,
        "speedup_forward": ({r["case"]: t["forward_median_s"] / r["forward_median_s"]
                             for r, t in zip(jax_res, torch_res, strict=True)}
                            if torch_res and args.forward else None),
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"m2f-{device}-{stamp}.json"
    write_record(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
