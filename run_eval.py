#!/usr/bin/env python
"""Evaluate IteRPrimE on a referring-segmentation split: the `iterprime-eval` console command
(`iterprime_jax.evaluation.cli`) run from the repository, same flags.

    python run_eval.py                      # ShapesRef val, shipped small model, gt proposals
    python run_eval.py --dataset refcoco_unc --split val --manual-dir ~/refer \\
        --data-dir ~/tensorflow_datasets --weights weights/blip-itm-large-coco \\
        --proposals gt --out results/refcoco-val
    python run_eval.py --dataset phrasecut --split test --manual-dir ~/PhraseCutDataset/data \
        --weights weights/blip-itm-large-coco --proposals heatmap --out results/phrasecut-test
    python run_eval.py --ablation           # the paper's ablation table on the same data
    python run_eval.py --ablation --record bench/results/NAME.json   # + a committed record

Writes OUT/samples.jsonl (one line per sentence, as it goes), OUT/metrics.json and
OUT/run_config.json, and prints the metrics table; killed and restarted with the same --out it
resumes. With --distributed every process evaluates its share of the images and process 0
merges and prints.
"""

from __future__ import annotations

import sys

from iterprime_jax.evaluation.cli import build_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
