"""IGRS's accept branch with trained weights against the PyTorch reference.

The shipped ShapesRef model (trained, committed under weights/) stops after pass 0 for almost
every sentence; on ShapesRef val image 2016 (val index 15) it accepts the second pass of "the
red square". The library's per-pass maps, P(match) per pass, accepted passes and chosen
proposal are compared with bench/torch_reference.py, an independent port of the authors' loop
(full eager forward + backward per pass in transformers' BLIP, a Python `break` on rejection),
through a torch model holding the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import iterprime_jax as ij
import shapesref as sr

from .float32 import assert_clear_margin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import shipped_workload as sw  # noqa: E402
import torch_reference as tr  # noqa: E402

# Float32 tolerances as in tests/float32.py, for this model's longest reduction (the MLP's
# 256) over about 16 reductions in a row (2 vision + 3 text layers): two implementations
# (XLA vs eager torch) may differ by 2 * 256 * 2**-24 * 16 = 5e-4 of the magnitudes.
REL = 2 * 256 * 2.0**-24 * 16
MAP_TOL = 10 * REL         # min-max normalised PWE maps (forward + backward, normalisation)
PROB_RTOL = 2 * REL * 16   # P(match), logits below 16


@pytest.mark.slow
def test_accept_branch_matches_torch_reference():
    model = ij.load(ROOT / "weights" / "shapesref-itm")
    mcfg = ij.method_config(model)
    scene, refs = sr.generate_example(sr.ShapesRefConfig(), "val", 15)
    sentences = [s for r in refs for s in r.sentences]
    assert "the red square" in sentences
    props = np.stack([o.mask for o in scene.objects]).astype(bool)
    ours = ij.segment_batch(model, scene.image, sentences, props, mcfg)

    batch = ij.method.pipeline.encode_texts(model, sentences, mcfg)
    ref = tr.Reference(sw.torch_model_from_params(model.params, model.config),
                       layer=mcfg.layer, iterations=mcfg.iterations, alpha=mcfg.alpha,
                       max_components=mcfg.max_components)
    ncomp = tr.count_components(props)
    accepted = 0
    for j, o in enumerate(ours):
        sent = tr.Sentence.from_arrays(batch.input_ids[j], batch.attention_mask[j],
                                       batch.focus[j], batch.primary[j])
        r = ref.segment(scene.image, sent, props, ncomp)
        n = len(r.scores)  # passes the reference ran (accepted ones + the rejected one)
        assert_clear_margin(np.asarray(r.scores)[None], PROB_RTOL)
        # decisions: the same accepted passes, the same stop, the same proposal
        assert o.iterations == r.iterations, sentences[j]
        assert np.isnan(o.scores[n:]).all() and not np.isnan(o.scores[:n]).any()
        assert o.proposal_index == r.index and o.has_candidate == r.has_candidate
        # values: P(match) and the map of every pass that ran
        np.testing.assert_allclose(o.scores[:n], r.scores, rtol=PROB_RTOL, atol=0)
        np.testing.assert_allclose(o.heatmaps_per_iteration[:n], np.stack(r.heats),
                                   atol=MAP_TOL, rtol=0)
        accepted += o.iterations > 1
    assert accepted >= 1  # the accept branch ran (and was compared) at least once
    ref.hooks.remove()
