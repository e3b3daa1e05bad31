"""The shipped small model (weights/shapesref-itm) loads and segments ShapesRef val samples
whose right answers come from the generator (not from running the model).

A regression test of the committed weights together with the whole pipeline: the recommended
method config (`method.json`), the spaCy parse, Grad-CAM, PWE, IGRS and proposal selection with
the scene's instance masks as proposals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import iterprime_jax as ij
import shapesref as sr

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("ITERPRIME_SHIPPED_WEIGHTS", ROOT / "weights" / "shapesref-itm"))
NUM_IMAGES = 12  # the first val images of the default benchmark (ShapesRef v2)

# The right answers come from the generator: each sentence's referred object is
# `scene.objects[ref.target]`, regenerated from the seed; a sentence counts as correct when the
# chosen mask covers that object with IoU >= 0.5 (proposals are disjoint instance masks, so
# that means the right object). Chance (a random object of the image) is about 1 in 4.
# MIN_CORRECT: sentences correct over those images when the weights were committed, less a
# margin for float differences across XLA builds; MIN_CORRECT_BY_KIND likewise per kind.
# Measured: 40 of 58 (attribute 26/28, position 13/20, relation 1/10; chance about 15).
MIN_CORRECT = 36
MIN_CORRECT_BY_KIND: dict[str, int] = {"attribute": 23, "position": 11}


@pytest.fixture(scope="module")
def model() -> ij.Model:
    assert (WEIGHTS / "blip_config.json").is_file(), f"shipped weights missing in {WEIGHTS}"
    return ij.load(WEIGHTS)


def _outcomes(model: ij.Model) -> dict[tuple[int, int, int], tuple[str, float]]:
    """(kind, IoU against the generator's target mask) of every sentence of the first
    NUM_IMAGES val images."""
    cfg = ij.method_config(model)
    out = {}
    for i in range(NUM_IMAGES):
        scene, refs = sr.generate_example(sr.ShapesRefConfig(), "val", i)
        props = np.stack([o.mask for o in scene.objects])
        sents = [s for r in refs for s in r.sentences]
        results = ij.segment_batch(model, scene.image, sents, props, cfg)
        k = 0
        for r_i, ref in enumerate(refs):
            gt = scene.objects[ref.target].mask
            for s_i in range(len(ref.sentences)):
                m = results[k].mask
                union = (m | gt).sum()
                out[i, r_i, s_i] = (ref.kind, float((m & gt).sum() / union) if union else 0.0)
                k += 1
    return out


def test_files_and_recipe(model: ij.Model) -> None:
    log = json.loads((WEIGHTS / "training_log.json").read_text())
    recipe = log["recipe"]
    assert recipe["steps"] > 0
    assert log["history"][-1]["step"] == recipe["steps"] + recipe.get("caption_steps", 0)
    assert ij.BlipConfig.from_dict(log["model_config"]) == model.config
    method = json.loads((WEIGHTS / "method.json").read_text())
    assert 0 <= method["layer"] < model.config.text.num_hidden_layers
    assert ij.method_config(model).layer == method["layer"]
    ids = model.tokenizer("there is a small green triangle")["input_ids"]
    assert model.tokenizer.unk_token_id not in ids and len(ids) == 8  # real WordPiece ids
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size < 20 * 2**20, size
    by_neg = log["heldout_itm_by_negative"]  # the per-negative report is in the log
    assert {"attribute", "position", "relation"} <= set(by_neg)
    assert "relation" in by_neg["relation"]


def test_val_samples_segment_the_generators_target(model: ij.Model) -> None:
    got = _outcomes(model)
    assert len(got) >= 2 * NUM_IMAGES
    correct = sum(iou >= 0.5 for _, iou in got.values())
    assert correct >= MIN_CORRECT, (correct, len(got))
    for kind, need in MIN_CORRECT_BY_KIND.items():
        have = sum(iou >= 0.5 for k, iou in got.values() if k == kind)
        assert have >= need, (kind, have, need)
