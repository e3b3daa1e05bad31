"""The figures the notebooks show: pass decisions, primary-word highlighting, panel contents."""

from __future__ import annotations

import numpy as np
import pytest

from iterprime_jax import resize_heatmap
from iterprime_jax.evaluation.gallery import SampleView, worst_samples
from iterprime_jax.method.pipeline import SegmentResult
from iterprime_jax.visualize import (
    highlight_spans,
    mask_caption,
    pass_decisions,
    plot_passes,
    plot_samples,
)

NAN = float("nan")


def result(scores, iterations, proposal=1, primary="cube", hw=(30, 40), mask_any=True):
    mask = np.zeros(hw, bool)
    mask[5:10, 5:12] = mask_any
    n = len(scores)
    heats = np.zeros((n, 4, 5), np.float32)
    for i in range(n):
        heats[i, i % 4, i % 5] = 1.0 if np.isfinite(scores[i]) else 0.0
    return SegmentResult(
        mask=mask, heatmap=np.linspace(0, 1, hw[0] * hw[1]).reshape(hw).astype(np.float32),
        iterations=iterations, primary_word=primary, proposal_index=proposal,
        has_candidate=proposal >= 0, scores=np.asarray(scores, np.float32),
        heatmaps_per_iteration=heats, expression="the red Cube, left of the cube-ish ball",
        truncated=False)


@pytest.mark.parametrize("scores, iterations, want", [
    ([0.5, 0.6, 0.7], 3, ["accepted"] * 3),
    ([0.5, 0.4, NAN], 1, ["accepted", "rejected", "not run"]),
    ([0.5, 0.6, 0.55], 2, ["accepted", "accepted", "rejected"]),
    ([0.5, NAN, NAN], 1, ["accepted", "not run", "not run"]),  # iterations=1 configured
])
def test_pass_decisions(scores, iterations, want) -> None:
    assert pass_decisions(np.asarray(scores), iterations) == want


def test_pass_decisions_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="iterations 0"):
        pass_decisions(np.asarray([0.5, 0.4]), 0)
    with pytest.raises(ValueError, match="iterations 3"):
        pass_decisions(np.asarray([0.5, 0.4]), 3)


def test_highlight_spans() -> None:
    spans = highlight_spans("the red Cube, left of the cube-ish ball", "cube")
    assert "".join(t for t, _ in spans) == "the red Cube, left of the cube-ish ball"
    assert [t for t, hit in spans if hit] == ["Cube,"]  # case and punctuation ignored
    assert highlight_spans("a ball", None) == [("a ball", False)]
    assert [t for t, hit in highlight_spans("cube and cube", "cube") if hit] == ["cube", "cube"]
    assert [t for t, hit in highlight_spans("the man's hat", "man") if hit] == ["man's"]
    assert [t for t, hit in highlight_spans("the dogs\u2019 bowl", "dogs") if hit] == ["dogs\u2019"]
    assert not any(hit for _, hit in highlight_spans("the mandarin", "man"))


def test_mask_caption() -> None:
    assert mask_caption(result([0.5], 1, proposal=3)) == "chosen proposal 3"
    assert mask_caption(result([0.5], 1, proposal=-1)).startswith("heat map >= threshold")
    assert mask_caption(result([0.5], 1, proposal=-1, mask_any=False)).startswith("empty")


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def test_plot_passes_panels() -> None:
    image = np.full((30, 40, 3), 90, np.uint8)
    res = result([0.5, 0.6, 0.55], 2, proposal=1)
    fig = plot_passes(image, res)
    axes = fig.get_axes()
    assert len(axes) == 3 + 3  # image, 3 passes, final heat, proposal
    titles = [ax.get_title() for ax in axes]
    assert titles[1] == "pass 0: P(match) 0.500\naccepted"
    assert titles[2] == "pass 1: P(match) 0.600\naccepted"
    assert titles[3] == "pass 2: P(match) 0.550\nrejected"
    assert titles[4] == "final heat map\n(blend of 2 passes)"
    assert titles[5] == "chosen proposal 1"
    all_text = texts(fig)
    assert "Cube," in all_text  # the primary word is its own (highlighted) text artist
    hit = next(t for t in fig.findobj(lambda a: hasattr(a, "get_text"))
               if t.get_text() == "Cube,")
    assert hit.get_fontweight() == "bold" and hit.get_bbox_patch() is not None
    # the per-pass heat map is drawn over the image at its size, resized like the pipeline
    heat_img = axes[1].get_images()[1]
    assert heat_img.get_extent() == [0, 40, 30, 0]
    np.testing.assert_allclose(heat_img.get_array(),
                               resize_heatmap(res.heatmaps_per_iteration[0], (30, 40)))
    fig.canvas.draw()  # renders (chained text positions resolve) without error


def test_plot_passes_not_run_and_bad_image() -> None:
    image = np.full((30, 40, 3), 90, np.uint8)
    fig = plot_passes(image, result([0.5, 0.4, NAN], 1, proposal=-1, mask_any=False))
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert titles[2] == "pass 1: P(match) 0.400\nrejected" and titles[3] == "pass 2: not run"
    assert titles[4] == "final heat map\n(pass 0)" and titles[5].startswith("empty")
    with pytest.raises(ValueError, match="image .* and result mask"):
        plot_passes(np.zeros((31, 40, 3), np.uint8), result([0.5], 1))


def test_worst_samples_and_plot_samples() -> None:
    recs = [{"image_id": i // 2, "ref_id": i, "sent_id": 10 + i, "IoU": iou, "I": 0, "U": 1,
             "sentence": "s"} for i, iou in enumerate([0.9, 0.1, 0.1, 0.5, 0.0])]
    assert [r["ref_id"] for r in worst_samples(recs, 3)] == [4, 1, 2]
    with pytest.raises(ValueError, match="k must be"):
        worst_samples(recs, 0)
    image = np.full((30, 40, 3), 90, np.uint8)
    gt = np.zeros((30, 40), bool)
    gt[5:10, 5:12] = True
    res = result([0.5, 0.6, 0.4], 2)
    view = SampleView(record={**recs[4], "I": 35, "U": 35}, image=image, gt=gt, proposals=None,
                      result=res, intersection=35, union=35)
    assert view.iou == 1.0 and view.matches_record
    fig = plot_samples([view, view])
    assert len(fig.get_axes()) == 8
    assert fig.get_axes()[2].get_title() == "prediction: IoU 1.00\nchosen proposal 1"
    assert fig.get_axes()[3].get_title() == \
        "heat, 2 pass(es) accepted\nP(match) 0.50, 0.60, 0.40 (rej.)"
    with pytest.raises(ValueError, match="no samples"):
        plot_samples([])
