"""The shipped small model (weights/shapesref-itm) loads and segments known ShapesRef samples.

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
from iterprime_jax import shapesref as sr

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = Path(os.environ.get("ITERPRIME_SHIPPED_WEIGHTS", ROOT / "weights" / "shapesref-itm"))
NUM_IMAGES = 12  # the first val images of the default benchmark

# (val image index, ref index, sentence index) that the shipped model segments exactly,
# found once by running this file's `_outcomes` over the first NUM_IMAGES val images.
# Whole refs whose every sentence is right: image 3 ("the large yellow diamond", "the small
# purple circle"), image 8 and image 10 (attribute expressions).
KNOWN_CORRECT: list[tuple[int, int, int]] = [
    (3, 0, 0), (3, 0, 1), (3, 0, 2), (3, 1, 0), (3, 1, 1), (3, 1, 2),
    (8, 0, 0), (8, 0, 1), (8, 0, 2), (10, 2, 0), (10, 2, 1), (10, 2, 2)]
# Sentences correct (IoU 1) over those images when the weights were committed, and the lower
# bound this test accepts (a margin for float differences across XLA builds).
MIN_CORRECT = 20  # 23 of 56 measured


@pytest.fixture(scope="module")
def model() -> ij.Model:
    assert (WEIGHTS / "blip_config.json").is_file(), f"shipped weights missing in {WEIGHTS}"
    return ij.load(WEIGHTS)


def _outcomes(model: ij.Model) -> dict[tuple[int, int, int], float]:
    """IoU of every sentence of the first NUM_IMAGES val images."""
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
                out[i, r_i, s_i] = float((m & gt).sum() / union) if union else 0.0
                k += 1
    return out


def test_files_and_recipe(model: ij.Model) -> None:
    log = json.loads((WEIGHTS / "training_log.json").read_text())
    assert log["recipe"]["steps"] > 0 and log["history"][-1]["step"] == log["recipe"]["steps"]
    assert ij.BlipConfig.from_dict(log["model_config"]) == model.config
    method = json.loads((WEIGHTS / "method.json").read_text())
    assert 0 <= method["layer"] < model.config.text.num_hidden_layers
    assert ij.method_config(model).layer == method["layer"]
    ids = model.tokenizer("there is a small green triangle")["input_ids"]
    assert model.tokenizer.unk_token_id not in ids and len(ids) == 8  # real WordPiece ids
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size < 20 * 2**20, size


def test_known_samples_segment_correctly(model: ij.Model) -> None:
    got = _outcomes(model)
    assert len(got) >= 3 * NUM_IMAGES
    assert KNOWN_CORRECT, "no known samples recorded"
    wrong = [k for k in KNOWN_CORRECT if got[k] != 1.0]
    assert not wrong, f"known samples no longer segmented exactly: {wrong}"
    correct = sum(v == 1.0 for v in got.values())
    assert correct >= MIN_CORRECT, (correct, len(got))
