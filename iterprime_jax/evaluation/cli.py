"""`iterprime-eval` / `python run_eval.py`: evaluate IteRPrimE on a referring-segmentation split.

    iterprime-eval                          # ShapesRef val, shipped small model, gt proposals
    iterprime-eval --dataset refcoco_unc --split val --manual-dir ~/refer \\
        --data-dir ~/tensorflow_datasets --weights Salesforce/blip-itm-large-coco \\
        --proposals gt --out results/refcoco-val
    iterprime-eval --dataset phrasecut --split test --manual-dir ~/PhraseCutDataset/data \\
        --weights Salesforce/blip-itm-large-coco --proposals heatmap --out results/pc-test
    iterprime-eval --ablation               # the paper's ablation table on the same data
    iterprime-eval --record bench/results/NAME.json   # also write a record with this command
    iterprime-eval --dataset refcoco_unc ... --proposals mask2former \
        --proposer-weights weights/mask2former-swin-large-coco-panoptic \
        --save-proposals results/refcoco-val-m2f.json   # proposals on the fly, saved

Writes OUT/samples.jsonl (one line per sentence, as it goes), OUT/metrics.json and
OUT/run_config.json, and prints the metrics table; killed and restarted with the same --out it
resumes. With --distributed every process evaluates its share of the images and process 0
merges and prints. `--weights` takes a converted directory or a Hugging Face hub id.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("iterprime_jax.evaluation.cli")


def _shipped_method() -> tuple[dict[str, Any], str]:
    """The fields the shipped model's method.json sets (the default dataset's default weights),
    and where they come from (for the --help texts); nothing when it is not there."""
    from iterprime_jax.method.settings import METHOD_JSON, read_method_json
    from iterprime_jax.shipped import SHAPESREF_MODEL, SHAPESREF_MODEL_NAME

    try:
        recommended = read_method_json(SHAPESREF_MODEL.resolve())
    except (OSError, ValueError):
        return {}, ""
    return recommended, f"{SHAPESREF_MODEL_NAME}/{METHOD_JSON}"


def build_parser() -> argparse.ArgumentParser:
    """The evaluation CLI's parser: the data flags here, the rest in `_add_run_args`."""
    from iterprime_jax.evaluation import EvalConfig
    from iterprime_jax.evaluation.config import default_data_dir
    from iterprime_jax.evaluation.datasets import dataset_names
    from iterprime_jax.metrics import CONVENTIONS
    from iterprime_jax.shipped import SHAPESREF_MODEL_NAME

    defaults = EvalConfig()
    ap = argparse.ArgumentParser(
        prog="iterprime-eval" if Path(sys.argv[0]).name == "iterprime-eval" else "run_eval.py",
        description="Evaluate IteRPrimE (zero-shot referring image segmentation) on a split.")
    ap.add_argument("--dataset", default=defaults.dataset, choices=dataset_names(),
                    help="dataset: RefCOCO/+/g, PhraseCut or one registered by a project "
                         f"(entry point group iterprime_jax.datasets; default: {defaults.dataset})")
    ap.add_argument("--split", default=defaults.split,
                    help="split name: val, testA, testB, test; PhraseCut: val, test, miniv, "
                         f"train (default: {defaults.split})")
    ap.add_argument("--manual-dir", default=None, metavar="DIR",
                    help="the raw files the split is built from (refer layout or VGPhraseCut_v0, "
                         "see tfds_refcoco/README.md); needed until the split is built "
                         "(default: the dataset's own if it has one; ShapesRef is generated "
                         "under $ITERPRIME_CACHE/shapesref if missing)")
    ap.add_argument("--data-dir", default=None, metavar="DIR",
                    help=f"TFDS data dir, the build cache (default: {default_data_dir()})")
    ap.add_argument("--weights", default=defaults.weights,
                    help="converted weights dir or Hugging Face hub id, converted once "
                         "(default: the dataset's model if it has one, else the shipped small "
                         f"model {SHAPESREF_MODEL_NAME})")
    ap.add_argument("--proposals", default=defaults.proposals,
                    help="gt (oracle instance masks; not for PhraseCut), heatmap (no proposals: "
                         "thresholded heat map), mask2former (computed on the fly with "
                         "--proposer-weights) or FILE: a COCO-style results JSON of "
                         f"class-agnostic RLE masks (default: {defaults.proposals})")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="output dir; resumes if it holds the same run "
                         "(default: results/DATASET-SPLIT)")
    ap.add_argument("--limit", type=int, default=None, metavar="N",
                    help="evaluate only the first N images of the split (all their sentences)")
    ap.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help="images per step (default: the local device count, or 8 for images "
                         "up to 128 px)")
    ap.add_argument("--canvas", type=int, default=None, metavar="PX",
                    help="canvas side (default: 640 for COCO datasets, else from the images)")
    ap.add_argument("--convention", default=defaults.convention, choices=CONVENTIONS,
                    help="metric convention (standard: IoU>=X, empty union -> 0; iterprime: "
                         "(I+1e-6)/(U+1e-6), IoU>X; phrasecut: the official PhraseCut "
                         "evaluator, IoU>X, IoU 0 when I=0; default: phrasecut for "
                         "PhraseCut, standard otherwise)")
    ap.add_argument("--unseen", action="store_true",
                    help="PhraseCut: drop the tasks whose category is one of COCO's 80 classes "
                         "(Global-Local CLIP's 'unseen' evaluation)")
    _add_run_args(ap)
    return ap


def _add_run_args(ap: argparse.ArgumentParser) -> None:
    """The flags of what to run and how (ablation, record, precision, output, proposer,
    processes) and the method's flags (defaults from the shipped model's method.json)."""
    from iterprime_jax.cli_args import add_method_args, add_precision_arg, add_proposer_args

    ap.add_argument("--ablation", action="store_true",
                    help="run the paper's ablation (threshold, +proposals, +PWE, +IGRS 2/3/4, "
                         "full) and write OUT/ablation.json")
    ap.add_argument("--record", default=None, metavar="FILE",
                    help="also write a JSON record (this command, the configs, the metrics or "
                         "the ablation table) to FILE, e.g. bench/results/NAME.json")
    add_precision_arg(ap)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--verbose", action="store_true",
                    help="also show third-party INFO logs (orbax, JAX backends, TFDS)")
    add_proposer_args(ap)
    g = ap.add_argument_group("multi-process (jax.distributed)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (cluster auto-detection unless "
                        "the flags below are given)")
    g.add_argument("--coordinator", default=None, help="coordinator address HOST:PORT")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    add_method_args(ap, *_shipped_method())


def _rename_first_column(table: str, name: str) -> str:
    """format_table's first header is "split"; name it `name` (width kept when it fits)."""
    head, sep, rest = table.partition("\n")
    width = len(head) - len(head[len("split"):].lstrip(" "))
    if head.startswith("split") and len(name) < width:
        head = name.ljust(width) + head[width:]
    return head + sep + rest


class _Bar:
    """tqdm over sentences (rate and ETA), created at the first progress call."""

    def __init__(self, enabled: bool, desc: str):
        self.enabled, self.desc, self.bar = enabled, desc, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="sent",
                            dynamic_ncols=True, smoothing=0.1)
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_record(path: str | Path, argv: list[str], config: Any, method: Any,
                 results: dict[str, Any]) -> None:
    """A committed-results record: the command that made it, both configs and the results."""
    prog = "iterprime-eval" if Path(sys.argv[0]).name == "iterprime-eval" else "python run_eval.py"
    rec = {"command": " ".join([prog, *argv]),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "eval_config": dataclasses.asdict(config), "method": dataclasses.asdict(method),
           **results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")


def check_out_dir(out: str | Path) -> None:
    """ValueError naming --out when it, or a folder above it, is a file (before any compute)."""
    p = Path(out)
    for q in (p, *p.parents):
        if q.exists() and not q.is_dir():
            raise ValueError(f"--out {out}: {q} is a file; --out names the run's output folder")


def check_distributed_args(args: argparse.Namespace) -> None:
    """ValueError naming the multi-process flags when they cannot describe a process."""
    given = [f for f, v in (("--coordinator", args.coordinator),
                            ("--num-processes", args.num_processes),
                            ("--process-id", args.process_id)) if v is not None]
    if given and not args.distributed:
        raise ValueError(f"{', '.join(given)} given without --distributed")
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.process_id is not None and args.process_id < 0:
        raise ValueError(f"--process-id must be >= 0, got {args.process_id}")
    if (args.process_id is not None and args.num_processes is not None
            and args.process_id >= args.num_processes):
        raise ValueError(f"--process-id {args.process_id} must be < --num-processes "
                         f"{args.num_processes} (processes are numbered from 0)")


def start_distributed(args: argparse.Namespace) -> None:
    """`initialize_distributed` with its failure as one ValueError naming the flags."""
    from iterprime_jax.evaluation import initialize_distributed
    from iterprime_jax.memory import first_line

    try:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    except Exception as e:  # noqa: BLE001 - JAX raises several types; one line for all
        raise ValueError(f"--distributed: jax.distributed.initialize failed ({first_line(e)});"
                         " outside a cluster JAX detects, pass --coordinator HOST:PORT, "
                         "--num-processes N and --process-id I") from None


def main(argv: list[str] | None = None) -> int:
    """The CLI; Ctrl-C ends it with one line and exit status 130 (finished samples kept)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return 130


def _main(argv: list[str] | None = None) -> int:
    from iterprime_jax.cli_args import apply_stanza_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    apply_stanza_dir(args)
    if not args.verbose:
        from iterprime_jax.cli_args import quiet_third_party_logs

        quiet_third_party_logs()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    try:
        check_distributed_args(args)
        if args.distributed:
            start_distributed(args)
        config = config_from_args(args)
    except ValueError as e:
        log.error("%s", e)
        return 2
    import jax

    from iterprime_jax.cli_args import method_overrides
    from iterprime_jax.evaluation import EvalError, load_model
    from iterprime_jax.method.settings import resolve_method
    from iterprime_jax.models.checkpoint import CheckpointError

    pi = jax.process_index()
    bar = _Bar(not args.no_progress, f"eval p{pi}" if jax.process_count() > 1 else "eval")
    try:
        model, weights = load_model(config, None)
        text_config = model.config.text
        method = resolve_method(weights, text_config.num_hidden_layers, method_overrides(args),
                                text_config.max_position_embeddings)
        run = _run_ablation if args.ablation else _run_evaluation
        run(args, argv, config, method, model, bar)
    except (EvalError, CheckpointError, ValueError, OSError) as e:
        bar.close()
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        bar.close()
        raise
    log.info("done in %.1fs", time.perf_counter() - t0)
    return 0


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's `EvalConfig` (defaults resolved) from the flags, checked before anything
    loads; ValueError naming a bad flag."""
    import tensorflow_datasets as tfds

    from iterprime_jax.cli_args import propose_config_from_args
    from iterprime_jax.evaluation import EvalConfig
    from iterprime_jax.evaluation.checks import check_file, check_settings
    from iterprime_jax.evaluation.config import default_out

    tfds.disable_progress_bar()
    check_out_dir(args.out or default_out(args.dataset, args.split))
    config = EvalConfig(
        dataset=args.dataset, split=args.split, manual_dir=args.manual_dir,
        data_dir=args.data_dir, weights=args.weights, proposals=args.proposals,
        out=args.out, limit=args.limit, batch_size=args.batch_size, canvas=args.canvas,
        convention=args.convention, proposer_weights=args.proposer_weights,
        save_proposals=args.save_proposals, propose=propose_config_from_args(args),
        unseen=args.unseen, precision=args.precision).with_defaults()
    check_settings(config)  # again in evaluate: here before the model is loaded
    if args.record:
        check_file(args.record, "--record")
    return config


def _run_ablation(args: argparse.Namespace, argv: list[str], config: Any, method: Any,
                  model: Any, bar: _Bar) -> None:
    """`run_ablation` and, on process 0, its table (and the --record)."""
    from iterprime_jax.evaluation import run_ablation
    from iterprime_jax.metrics import format_table

    table = run_ablation(config, method, model=model, progress=bar)
    bar.close()
    if table is None:
        return
    print(f"\nablation: {config.dataset} {config.split}, proposals "
          f"{config.proposals if config.proposals != 'heatmap' else 'gt'}, "
          f"convention {config.convention}")
    print(_rename_first_column(format_table(table), "config"))
    print(f"wrote {config.out}/ablation.json")
    if args.record:
        write_record(args.record, argv, config, method, {"ablation": table})
        print(f"wrote {args.record}")


def _run_evaluation(args: argparse.Namespace, argv: list[str], config: Any, method: Any,
                    model: Any, bar: _Bar) -> None:
    """`evaluate` and, on process 0, its tables: the metrics, PhraseCut's subsets, the
    dataset's report (`DatasetHooks.format_report`), and the --record."""
    from iterprime_jax.evaluation import evaluate
    from iterprime_jax.evaluation.datasets import dataset_hooks
    from iterprime_jax.metrics import format_table

    res = evaluate(config, method, model=model, progress=bar)
    bar.close()
    if res.metrics is None:
        return
    print(f"\n{config.dataset} {config.split}: {res.num_samples} sentences, "
          f"{res.num_images} images, proposals {config.proposals}, "
          f"convention {config.convention}, {res.no_candidate} without candidate")
    print(format_table(res.metrics))
    if res.subsets is not None:
        print(f"\nPhraseCut subsets{' (unseen)' if config.unseen else ''}:")
        print(_rename_first_column(format_table(res.subsets), "subset"))
    hooks = dataset_hooks(config.dataset)
    if res.by_kind and hooks is not None and hooks.format_report is not None:
        print("\n" + hooks.format_report(res.by_kind))
    print(f"wrote {res.out}/samples.jsonl and {res.out}/metrics.json")
    if args.record:
        extra = {} if res.subsets is None else {"subsets": res.subsets}
        write_record(args.record, argv, config, method, {
            "metrics": res.metrics, "sentences": res.num_samples,
            "images": res.num_images, "no_candidate": res.no_candidate,
            "by_kind": res.by_kind, **extra})
        print(f"wrote {args.record}")


def entry() -> None:
    """Console-script entry point (`iterprime-eval`)."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
