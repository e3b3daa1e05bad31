"""Host <-> device bytes per image of an evaluation with Mask2Former proposals computed on the fly:
proposals kept on the devices (the evaluator's path) against the host round trip they replaced.

    python bench/bench_transfers.py [--images 16] [--batch-size 4] [--out FILE]

Both runs use the evaluator's own loop (`evaluation.runner.run_batches`: prefetching Loader,
`Device` steps) on the synthetic RefCOCO-sized split of `bench/device_eval.py` (images of
360-640 x 480-640, 1-15 sentences each) with tiny random models of the full query count (BLIP
ITM and a Mask2Former with 200 queries: the bytes depend on the query count and the image
sizes, not on the model's width):

  device: ``proposals="mask2former"``: `Proposer.device_masks` -> masks laid on the canvas and
          their components counted on the devices (`loader.proposals_on_canvas`);
  host:   the path before it: `Proposer(images)` brings the (Q, H, W) masks to the host, the
          loader lays them on the canvas, counts components with scipy and sends them back
          (the code path gt / file proposals still take).

Every transfer is counted where it happens: `jax.device_put` of host arrays (host -> device)
and `jax.device_get` of device arrays (device -> host) are wrapped, and JAX's transfer guard
is set to "disallow" for the whole process, so an implicit transfer fails the run instead of
escaping the count. The two runs must select the same proposals (checked). Writes a table and
a JSON record with the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_common import write_record  # noqa: E402  (bench/ is on sys.path)


class Counter:
    """Bytes through `jax.device_put` (host leaves) and `jax.device_get` (device leaves)."""

    def __init__(self) -> None:
        self.h2d = 0
        self.d2h = 0
        self.d2d = 0

    def install(self) -> Any:
        import jax

        put, get = jax.device_put, jax.device_get

        def counted_put(x: Any, *a: Any, **k: Any) -> Any:
            for leaf in jax.tree_util.tree_leaves(x):
                if isinstance(leaf, jax.Array):
                    self.d2d += leaf.nbytes
                else:
                    self.h2d += np.asarray(leaf).nbytes
            return put(x, *a, **k)

        def counted_get(x: Any) -> Any:
            self.d2h += sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(x)
                            if isinstance(leaf, jax.Array))
            return get(x)

        jax.device_put, jax.device_get = counted_put, counted_get
        return lambda: (setattr(jax, "device_put", put), setattr(jax, "device_get", get))


def run(path: str, images: int, batch_size: int) -> dict[str, Any]:
    import jax
    from device_eval import blip_config, mask2former, synthetic_split
    from transformers import BertTokenizer

    import iterprime_jax as ij
    from iterprime_jax.evaluation import runner
    from iterprime_jax.evaluation.config import COCO_CANVAS, AblationRow, EvalConfig
    from iterprime_jax.evaluation.device import Device
    from iterprime_jax.evaluation.proposals import ProposalSource
    from iterprime_jax.models.blip.modeling import init_params
    from iterprime_jax.models.loading import Model
    from iterprime_jax.models.mask2former.preprocess import ProposeConfig
    from iterprime_jax.placement import place_params
    from iterprime_jax.shipped import VOCAB

    cfg = blip_config(True)
    model = Model(config=cfg, params=place_params(init_params(cfg, jax.random.PRNGKey(0))),
                  tokenizer=BertTokenizer(str(VOCAB), do_lower_case=True),
                  path=Path("random-blip-tiny"))
    m2f = mask2former(True)
    proposer = ij.Proposer(m2f, ProposeConfig(), max_batch=batch_size)
    metas, sources = synthetic_split(images)
    method = ij.IteRPrimEConfig(layer=cfg.text.num_hidden_layers - 1)
    counter = Counter()
    restore = counter.install()
    jax.config.update("jax_transfer_guard", "disallow")
    try:
        if path == "device":
            source = ProposalSource("mask2former", proposer=proposer)
        else:  # the host round trip: proposals as host arrays in the examples, like gt's
            for m in metas:
                ex = sources.full[m.refs[0].index]
                ex["proposals"] = proposer([ex["image"]])[0]
                ex["proposal_ann_ids"] = list(range(proposer.num_queries))
            metas = [dataclasses.replace(m, num_gt_proposals=proposer.num_queries)
                     for m in metas]
            source = ProposalSource("gt")
        ctx = runner.Context(config=EvalConfig(), model=model, device=Device(model),
                             sources=sources, images=metas, proposals=source,
                             canvas=COCO_CANVAS, batch_size=batch_size, weights=Path("."))
        chosen: list[int] = []

        def on_batch(batch: Any, outs: list[Any]) -> None:
            for k, meta in enumerate(batch.images):
                chosen.extend(int(i) for i in outs[0][3][k][: meta.num_sentences])

        runner.run_batches(ctx, metas, [AblationRow("main", method, True)], on_batch)
    finally:
        jax.config.update("jax_transfer_guard", "allow")
        restore()
    n = len(metas)
    return {"path": path, "images": n, "sentences": sum(m.num_sentences for m in metas),
            "host_to_device_bytes_per_image": counter.h2d / n,
            "device_to_host_bytes_per_image": counter.d2h / n,
            "device_to_device_bytes_per_image": counter.d2d / n,
            "mean_image_pixels": float(np.mean([m.hw[0] * m.hw[1] for m in metas])),
            "chosen_proposals": chosen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    runs = {p: run(p, args.images, args.batch_size) for p in ("host", "device")}
    same = runs["host"].pop("chosen_proposals") == runs["device"].pop("chosen_proposals")
    if not same:
        raise SystemExit("the two paths selected different proposals: nothing recorded")
    mib = 2 ** 20
    print(f"{'path':<8} {'host->device MiB/image':>23} {'device->host MiB/image':>23}")
    for p, r in runs.items():
        print(f"{p:<8} {r['host_to_device_bytes_per_image'] / mib:>23.2f} "
              f"{r['device_to_host_bytes_per_image'] / mib:>23.2f}")
    rec = {"command": " ".join(["python bench/bench_transfers.py",
                                *(sys.argv[1:] if argv is None else argv)]),
           "date_utc": started.isoformat(timespec="seconds"),
           "loadavg_end": list(os.getloadavg()), "canvas": 640, "queries": 200,
           "same_selection": same, "runs": runs,
           "saved_bytes_per_image": {
               k: runs["host"][k] - runs["device"][k]
               for k in ("host_to_device_bytes_per_image", "device_to_host_bytes_per_image")}}
    out = args.out or BENCH / "results" / f"transfers-cpu-{started.strftime('%Y%m%d-%H%M')}.json"
    write_record(out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
