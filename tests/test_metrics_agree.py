"""One metrics definition: the evaluator's device-side I and U (`evaluation.device.eval_step`),
the host metrics (`iterprime_jax.metrics`) and the ablation's bootstrap give the same numbers
on the same masks, under every metric convention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.evaluation.bootstrap import _stats, paired_bootstrap
from iterprime_jax.evaluation.device import GroundTruth, StepInputs, eval_step
from iterprime_jax.method import pipeline
from iterprime_jax.method.refine import FloatSettings
from iterprime_jax.metrics import CONVENTIONS, intersection_union, summarize

CFG = IteRPrimEConfig(layer=0, max_text_length=16)


def _masks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(2, 6, 12, 16) predictions and ground truths with the corner cases of the conventions:
    an empty prediction, an empty union (I = U = 0), a perfect hit, an IoU of exactly 0.5."""
    pred = rng.random((2, 6, 12, 16)) < 0.4
    gt = rng.random((2, 6, 12, 16)) < 0.4
    pred[0, 0] = False                        # empty prediction, non-empty gt
    pred[0, 1] = gt[0, 1] = False             # empty union
    gt[1, 0] = pred[1, 0]                     # perfect hit
    pred[1, 1], gt[1, 1] = False, False
    pred[1, 1, :2, :4], gt[1, 1, :2, :2] = True, True  # I = 4, U = 8: IoU exactly 0.5
    return pred, gt


def test_device_counts_equal_host_counts_under_jit_and_vmap():
    pred, gt = _masks(np.random.default_rng(0))
    dev = jax.jit(jax.vmap(lambda p, g: intersection_union(p, g, xp=jnp)))(pred, gt)
    host = intersection_union(pred, gt)
    for d, h in zip(dev, host, strict=True):
        assert d.dtype == jnp.int32 and h.dtype == np.int64
        np.testing.assert_array_equal(np.asarray(d), h)
    # one (H, W) pair on the host: python ints, as the per-sample loop used them
    one = intersection_union(pred[1, 1], gt[1, 1])
    assert one == (4, 8) and all(type(v) is int for v in one)
    i, u = (np.asarray(a).reshape(-1) for a in dev)
    assert (i == 0).any() and (u == 0).any()  # the corner cases are there


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_bootstrap_uses_the_host_metrics(convention):
    """`_stats` over the identity resample is `summarize`'s mIoU and oIoU; the bootstrap's
    d_mIoU is the difference of `summarize`'s mIoU of two rows."""
    pred, gt = _masks(np.random.default_rng(1))
    i, u = (np.asarray(a).reshape(-1) for a in jax.device_get(
        jax.jit(lambda p, g: intersection_union(p, g, xp=jnp))(pred, gt)))
    i, u = i.astype(np.int64), u.astype(np.int64)
    want = summarize(i, u, convention)
    miou, oiou = _stats(i, u, np.arange(i.size)[None], convention)
    assert miou[0] == pytest.approx(want["mIoU"], abs=1e-12)
    assert oiou[0] == pytest.approx(want["oIoU"], abs=1e-12)
    i2 = np.where(np.arange(i.size) % 2, i, 0)  # a second row: every other sample missed
    out = paired_bootstrap({"a": (i, u), "b": (i2, u)}, n_boot=50, convention=convention)
    d = summarize(i2, u, convention)["mIoU"] - want["mIoU"]
    assert out["b"]["d_mIoU"] == pytest.approx(d, abs=1e-12)
    assert out["a"]["mIoU_lo"] <= want["mIoU"] <= out["a"]["mIoU_hi"]
    # the conventions do differ on these samples (empty union: 0 vs 1; IoU 0.5 at Prec@0.5)
    others = {c: summarize(i, u, c)["mIoU"] for c in CONVENTIONS}
    assert others["iterprime"] > others["standard"]


def test_eval_step_counts_are_the_host_counts_of_its_masks(tiny_model):
    """The evaluator's jitted step (2 images, vmapped) returns, per sentence, the host
    `intersection_union` of `segment_core`'s mask with the sentence's referred mask; the
    split metrics from either agree under every convention."""
    rng = np.random.default_rng(3)
    exprs = ["the man in a red shirt left of the dog", "left guy", "giraffe on the right"]
    canvas = 64
    preps, texts, gts, refs = [], [], [], []
    for k in range(2):
        h, w = (40, 50) if k == 0 else (48, 36)
        props = rng.random((3, h, w)) < 0.5
        props[0] = False
        props[0, : h // 2] = True
        preps.append(pipeline.prepare_image(
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8), tiny_model.config, props,
            canvas))
        batch = pipeline.encode_texts(tiny_model, exprs, CFG)
        texts.append(pipeline.pad_text(batch, 4, 16))
        gt = np.zeros((4, canvas, canvas), bool)
        gt[0, : h // 2, : w // 2] = True
        gt[1, h // 3:, :] = True
        gt[1, h:, :] = False
        gts.append(gt)                          # ref 2 and 3: empty (padding)
        refs.append(np.asarray([0, 1, 2, 0], np.int32))
    stack = lambda xs: type(xs[0])(*(np.stack(a) for a in zip(*xs, strict=True)))  # noqa: E731
    embeds = pipeline.encode_image_jit(tiny_model.params, tiny_model.config,
                                       np.stack([p.pixels for p in preps]))
    inputs = StepInputs(embeds, stack(texts), np.asarray([p.hw for p in preps], np.int32),
                        stack([p.proposal_arrays for p in preps]),
                        GroundTruth(np.stack(gts), np.stack(refs)))
    method, floats = pipeline.jit_method(CFG)
    out = jax.device_get(eval_step(tiny_model.params, tiny_model.config, method, canvas,
                                   floats, inputs))
    host_i, host_u = [], []
    for k, p in enumerate(preps):
        core = jax.device_get(pipeline.segment_core_jit(
            tiny_model.params, tiny_model.config, method, canvas,
            pipeline.CoreInputs(embeds[k][None], texts[k], np.asarray(p.hw, np.int32),
                                p.proposal_arrays), FloatSettings.of(CFG).traced()))
        i, u = intersection_union(core.mask, gts[k][refs[k]])
        np.testing.assert_array_equal(out.intersection[k], i)
        np.testing.assert_array_equal(out.union[k], u)
        np.testing.assert_array_equal(out.proposal[k], core.index)
        host_i.append(i)
        host_u.append(u)
    host_i, host_u = np.concatenate(host_i), np.concatenate(host_u)
    assert host_i.max() > 0 and (host_u > host_i).any()  # not trivial counts
    for c in CONVENTIONS:
        assert summarize(out.intersection.reshape(-1), out.union.reshape(-1), c) == \
            summarize(host_i, host_u, c)
