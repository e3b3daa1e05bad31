"""IGRS cost before / after the loop stops computing once every sentence has stopped.

    python bench/bench_passes.py [--before REV] [--reps N] [--out FILE]

Runs the same timing worker twice in fresh subprocesses: once on the library at git revision
REV (default: the commit before the change, extracted with `git archive` into a temporary
directory), once on this checkout. Two workloads:

* stop: the pipeline bench's random-weight blip-itm-base-coco model (bench_common: 480x640
  images, 7 sentences, 20 proposals), where every sentence stops after pass 0 (pass 1 is
  rejected); `segment_core_jit` per image with 3 and with 2 configured passes. Before the
  change 3 passes cost more than 2; after, the same.
* accept: the shipped ShapesRef model on ShapesRef val scenes where a later pass is accepted
  (found by scanning val with the library), 3 configured passes.

Per image: the median wall time of `segment_core_jit` over `reps` calls (inputs already on
the device, compiled before), and the passes in which some sentence of the image was active
(`passes_with_an_active_sentence`): after the change the passes the loop computes (every row
of an image's batch runs them); before it, the loop computed every configured pass anyway. Writes a
JSON record (with the command and the load average) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_BEFORE = "0b561be"  # main before issue 20 (IGRS was a fori_loop over every pass)


def _time_core(params: Any, cfg: Any, mcfg: Any, image: np.ndarray, rows: tuple,
               proposals: np.ndarray, reps: int) -> dict[str, Any]:
    import jax

    from iterprime_jax.method import pipeline as pl

    prep = pl.prepare_image(image, cfg, proposals)
    s = rows[0].shape[0]
    idx = np.concatenate([np.arange(s), np.zeros(pl.bucket(s) - s, int)])
    tl = pl.text_length_bucket(rows[1], rows[1].shape[1])
    text = [a[idx, :tl] for a in rows]
    emb = pl.encode_image_jit(params, cfg, jax.device_put(prep.pixels[None]))
    hw = np.asarray(prep.hw, np.int32)
    if hasattr(pl, "CoreInputs"):  # typed inputs (this tree)
        args = jax.device_put(pl.CoreInputs(emb, pl.TextArrays(*text), hw, prep.proposal_arrays))

        def run() -> Any:
            return pl.segment_core_jit(params, cfg, mcfg, prep.canvas, args)
    else:  # the 'before' revision's positional arrays
        flat = [jax.device_put(a) for a in (*text, hw, prep.proposals, prep.proposal_valid,
                                            prep.num_components)]

        def run() -> Any:
            return pl.segment_core_jit(params, cfg, mcfg, prep.canvas, emb, *flat)
    out = jax.device_get(run())
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        walls.append(time.perf_counter() - t0)
    computed = int(np.max(np.sum(~np.isnan(out.igrs.scores), axis=1)))
    return {"median_s": statistics.median(walls), "min_s": min(walls), "sentences": s,
            "accepted": out.igrs.iterations[:s].tolist(),
            "passes_with_an_active_sentence": computed}


def worker(wd: Path, reps: int, scenes: list[int]) -> dict[str, Any]:
    import jax

    import iterprime_jax as ij
    from iterprime_jax.config import IteRPrimEConfig
    from iterprime_jax.models.blip.config import BlipConfig
    from iterprime_jax.models.blip.convert import convert_state_dict

    res: dict[str, Any] = {"library": ij.__file__, "stop": {}, "accept": {}}
    cfg = BlipConfig.load(wd / "blip_config.json")
    with np.load(wd / "weights.npz") as z:
        params = jax.device_put(convert_state_dict({k: z[k] for k in z.files}, cfg))
    with np.load(wd / "data.npz") as z:
        data = {k: z[k] for k in z.files}
    s = int(json.loads((wd / "args.json").read_text())["sentences"])
    for n in (3, 2):
        mcfg = IteRPrimEConfig(iterations=n)
        res["stop"][f"iterations={n}"] = [
            _time_core(params, cfg, mcfg, data["images"][i],
                       tuple(data[k][i, :s] for k in ("input_ids", "attention_mask", "focus",
                                                      "primary")),
                       data["proposals"][i], reps) for i in range(len(data["images"]))]
    del params
    sys.path.insert(0, str(BENCH))
    import shipped_workload as sw

    model = ij.load(ROOT / "weights" / "shapesref-itm")
    shipped = jax.device_put(model.params)
    mcfg = ij.method_config(model)
    for i in scenes:
        (image, sentences, props), = sw.shapesref_scenes(1, start=i)
        batch = ij.method.pipeline.encode_texts(model, sentences, mcfg)
        rows = (batch.input_ids, batch.attention_mask, batch.focus, batch.primary)
        res["accept"][str(i)] = _time_core(shipped, model.config, mcfg, image, rows, props,
                                           reps * 10)
    return res


def spawn(library: Path, wd: Path, reps: int, scenes: list[int], tag: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(library), TF_CPP_MIN_LOG_LEVEL="2")
    out = wd / f"result_{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workdir", str(wd),
           "--reps", str(reps), "--scenes", *map(str, scenes), "--result", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=str(library))
    r = json.loads(out.read_text())
    r["process_wall_s"] = time.perf_counter() - t0
    return r


def summary(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def total(side: dict[str, Any], key: str) -> float:
        return sum(x["median_s"] for x in side["stop"][key])

    out: dict[str, Any] = {}
    for name, side in (("before", before), ("after", after)):
        out[name] = {
            "stop_3_passes_s_per_image": total(side, "iterations=3") / len(side["stop"]
                                                                       ["iterations=3"]),
            "stop_2_passes_s_per_image": total(side, "iterations=2") / len(side["stop"]
                                                                       ["iterations=2"]),
            "stop_cost_3_over_2": total(side, "iterations=3") / total(side, "iterations=2"),
            "stop_passes_with_an_active_sentence": [
                x["passes_with_an_active_sentence"] for x in side["stop"]["iterations=3"]],
            "accept_s_per_image": statistics.fmean(x["median_s"]
                                                   for x in side["accept"].values()),
            "accept_passes_with_an_active_sentence": [
                x["passes_with_an_active_sentence"] for x in side["accept"].values()],
            "accept_accepted": [x["accepted"] for x in side["accept"].values()]}
    out["speedup_stop_3_passes"] = (out["before"]["stop_3_passes_s_per_image"]
                                    / out["after"]["stop_3_passes_s_per_image"])
    out["speedup_accept"] = out["before"]["accept_s_per_image"] / out["after"][
        "accept_s_per_image"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision of the 'before' side")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--accepting", type=int, default=3,
                    help="ShapesRef val scenes with an accepted later pass")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scenes", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(worker(args.workdir, args.reps, args.scenes)))
        return
    sys.path.insert(0, str(BENCH))
    import shipped_workload as sw
    from bench_common import build_workload, clean_json, loadavg, log, our_config

    import iterprime_jax as ij

    started = datetime.datetime.now(datetime.timezone.utc)
    cmd = " ".join(["python bench/bench_passes.py", *(sys.argv[1:] if argv is None else argv)])
    rec: dict[str, Any] = {"command": cmd, "date_utc": started.isoformat(timespec="seconds"),
                           "cpu_count": os.cpu_count(), "loadavg_start": loadavg()}
    with tempfile.TemporaryDirectory(prefix="bench_passes_") as tmp:
        wd = Path(tmp)
        wargs = argparse.Namespace(seed=0, iterations=3, sentences=7, scaling=[],
                                   images=args.images, image_hw=[480, 640], proposals=20)
        (wd / "args.json").write_text(json.dumps(vars(wargs)))
        rec["workload"] = build_workload(wargs, wd)
        our_config().save(wd / "blip_config.json")
        model = ij.load(ROOT / "weights" / "shapesref-itm")
        scenes = sw.accepting_scenes(model, ij.method_config(model), args.accepting, 200)
        log(f"accepting ShapesRef val scenes: {scenes}")
        rec["accept_scenes"] = scenes
        before_dir = wd / "before"
        before_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before],
                                 check=True, capture_output=True).stdout
        tar = wd / "before.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(before_dir, filter="data")
        # the shipped weights are the same file in both trees (not changed by this issue)
        log(f"worker: before ({args.before})")
        before = spawn(before_dir, wd, args.reps, scenes, "before")
        log("worker: after (this checkout)")
        after = spawn(ROOT, wd, args.reps, scenes, "after")
    rec.update(before_revision=args.before, before=before, after=after,
               summary=summary(before, after), loadavg_end=loadavg())
    out = args.out or (BENCH / "results" / f"passes-cpu-{started.strftime('%Y%m%d-%H%M')}.json")
    out.write_text(json.dumps(clean_json(rec), indent=1) + "\n")
    sm = rec["summary"]
    print(f"{'':28s}{'before':>12s}{'after':>12s}")
    for key in ("stop_3_passes_s_per_image", "stop_2_passes_s_per_image", "stop_cost_3_over_2",
                "accept_s_per_image"):
        print(f"{key:28s}{sm['before'][key]:12.4f}{sm['after'][key]:12.4f}")
    key = "passes_with_an_active_sentence"
    print(f"passes computed (stop, 3 configured): before 3 (every configured pass), after "
          f"{sm['after']['stop_' + key]}")
    print(f"passes computed (accept): before 3, after {sm['after']['accept_' + key]}; "
          f"accepted {sm['after']['accept_accepted']}")
    print(f"load average {rec['loadavg_start']} -> {rec['loadavg_end']}\nwrote {out}")


if __name__ == "__main__":
    main()
