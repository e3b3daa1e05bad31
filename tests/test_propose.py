"""Mask2Former proposals (docs/method.md section 4): pre/post-processing against a PyTorch
version of the authors' (detectron2) rule written here, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from iterprime_jax.models.mask2former.postprocess import postprocess_masks, resize_logits
from iterprime_jax.models.mask2former.preprocess import (
    ProposeConfig,
    check_image,
    check_threshold,
    preprocess,
    resized_shape,
)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------- torch reference
def torch_preprocess(image: np.ndarray, short: int = 800, max_size: int = 1333,
                     div: int = 32) -> tuple[torch.Tensor, tuple[int, int]]:
    """detectron2 at test time: ResizeShortestEdge (PIL bilinear on uint8), (x - mean) / std,
    ImageList.from_tensors (zero pad bottom/right to a multiple of `div`). -> (1, 3, Hp, Wp)."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    nh, nw = int(nh + 0.5), int(nw + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    x = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    ph, pw = -(-nh // div) * div, -(-nw // div) * div
    return F.pad(x, (0, pw - nw, 0, ph - nh), value=0.0)[None], (nh, nw)


def torch_postprocess(mask_logits: torch.Tensor, padded_hw: tuple[int, int],
                      resized_hw: tuple[int, int], image_hw: tuple[int, int],
                      threshold: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Mask2Former inference + the authors' threshold: (Q, Hp/4, Wp/4) -> logits and bool
    masks (Q, H, W)."""
    up = F.interpolate(mask_logits[None], size=padded_hw, mode="bilinear", align_corners=False)
    up = up[:, :, : resized_hw[0], : resized_hw[1]]
    out = F.interpolate(up, size=image_hw, mode="bilinear", align_corners=False)[0]
    return out.numpy(), (out.sigmoid() > threshold).numpy()


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("hw,want", [
    ((480, 640), (800, 1067)), ((427, 640), (800, 1199)), ((640, 480), (1067, 800)),
    ((500, 500), (800, 800)), ((100, 1000), (133, 1333)), ((1000, 100), (1333, 133)),
    ((2, 3), (800, 1200)), ((800, 1333), (800, 1333)),
])
def test_resized_shape_follows_detectron2(hw, want):
    assert resized_shape(*hw) == want


@pytest.mark.parametrize("hw", [(48, 64), (37, 91), (120, 33), (2, 2)])
def test_preprocess_matches_detectron2(hw):
    rng = np.random.default_rng(hw[0])
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    cfg = ProposeConfig(short_edge=64, max_size=100)
    ref, ref_hw = torch_preprocess(img, 64, 100)
    got = preprocess(img, cfg)
    assert got.resized_hw == ref_hw and got.image_hw == hw
    assert got.pixels.shape == tuple(ref.shape[2:]) + (3,)
    np.testing.assert_array_equal(got.pixels, ref[0].permute(1, 2, 0).numpy())


def test_preprocess_default_sizes_and_canvas():
    img = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    ref, _ = torch_preprocess(img)
    got = preprocess(img)
    assert got.pixels.shape == (800, 1088, 3) and got.resized_hw == (800, 1067)
    np.testing.assert_array_equal(got.pixels, ref[0].permute(1, 2, 0).numpy())
    big = preprocess(img, canvas=(832, 1152))
    np.testing.assert_array_equal(big.pixels[:800, :1088], got.pixels)
    assert not big.pixels[800:].any() and not big.pixels[:, 1088:].any()
    with pytest.raises(ValueError, match="canvas"):
        preprocess(img, canvas=(800, 1024))


def test_pil_image_accepted_as_rgb():
    arr = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([arr, np.full((20, 30, 1), 7, np.uint8)], -1))
    np.testing.assert_array_equal(check_image(rgba), arr)


# --------------------------------------------------------------------------- postprocessing
@pytest.mark.parametrize("image_hw", [(37, 53), (480, 640), (427, 640), (640, 427), (5, 3),
                                      (1000, 100)])
def test_postprocess_matches_torch(image_hw):
    rng = np.random.default_rng(sum(image_hw))
    nh, nw = resized_shape(*image_hw)
    ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
    q = 6
    low = (rng.normal(size=(q, ph // 4, pw // 4)) * 3).astype(np.float32)
    ref_logits, ref = torch_postprocess(torch.from_numpy(low), (ph, pw), (nh, nw), image_hw)
    out_hw = (-(-image_hw[0] // 64) * 64, -(-image_hw[1] // 64) * 64)
    args = (np.asarray([nh, nw], np.int32), np.asarray(image_hw, np.int32), out_hw)
    logits = np.asarray(resize_logits(low, *args))
    h, w = image_hw
    np.testing.assert_allclose(logits[:, :h, :w], ref_logits, atol=1e-3, rtol=0)
    assert not logits[:, h:].any() and not logits[:, :, w:].any()
    masks = np.asarray(postprocess_masks(low, *args, 0.35))
    assert masks.dtype == bool and masks.shape == (q, *out_hw)
    assert not masks[:, h:].any() and not masks[:, :, w:].any()
    # a mask pixel may differ only where the reference logit lies within the logits'
    # tolerance (above) of the threshold's logit: the rounding there can go either way
    flips = masks[:, :h, :w] != ref
    cut = np.log(0.35 / 0.65)
    assert (np.abs(ref_logits[flips] - cut) <= 1e-3).all(), ref_logits[flips] - cut
    assert 0.05 < ref.mean() < 0.95  # the threshold cuts through the logits (not vacuous)


def test_postprocess_threshold_is_strict_sigmoid():
    """A constant logit map stays constant through both resizes: just below / above
    logit(0.35) gives all False / all True."""
    low = np.zeros((2, 8, 8), np.float32)
    low[0] = np.log(0.35 / 0.65) - 1e-3
    low[1] = np.log(0.35 / 0.65) + 1e-3
    args = (np.asarray([32, 32]), np.asarray([20, 20]), (20, 20))
    m = np.asarray(postprocess_masks(low, *args))
    assert not m[0].any() and m[1].all()
    assert not np.asarray(postprocess_masks(low, *args, 0.6)).any()
    assert np.asarray(postprocess_masks(low, *args, 0.3)).all()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad,msg", [
    (np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
    (np.zeros((1, 40, 3), np.uint8), "1x40 pixels"),
    (np.zeros((30, 40, 2), np.uint8), "shape"),
    (np.zeros((30, 40, 3), np.float32), "dtype float32"),
    (np.zeros((2, 30, 40, 3), np.uint8), "shape"),
])
def test_bad_images_named(bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        check_image(bad, "photo")
    assert "photo" in str(e.value)


@pytest.mark.parametrize("t", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan"), True, "0.3", None])
def test_bad_threshold_named(t):
    with pytest.raises(ValueError, match="threshold"):
        check_threshold(t)
    with pytest.raises(ValueError, match="threshold"):
        ProposeConfig(threshold=t)


def test_good_threshold():
    assert check_threshold(0.35) == 0.35 and check_threshold(np.float32(0.5)) == 0.5
