"""resize_heatmap == torch F.interpolate(mode="bicubic", align_corners=False), also through the
pipeline's fixed-canvas path with a traced image size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import iterprime_jax as ij
from iterprime_jax.config import IteRPrimEConfig
from iterprime_jax.method import pipeline


def torch_bicubic(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.asarray(x, np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=hw, mode="bicubic", align_corners=False)
    return out[0, 0].numpy()


SIZES = [((4, 4), (40, 50)),       # upscaling, non-square output
         ((5, 3), (7, 11)),        # odd sizes, non-square grid
         ((24, 24), (427, 640)),   # a COCO-like image from BLIP's grid
         ((24, 24), (24, 24)),     # identity
         ((6, 7), (3, 5)),         # downscaling (no antialias)
         ((3, 3), (1, 1))]


@pytest.mark.parametrize("grid,hw", SIZES)
def test_matches_torch_bicubic(grid, hw):
    x = np.random.default_rng(sum(grid) + sum(hw)).normal(size=grid).astype(np.float32)
    got = np.asarray(ij.resize_heatmap(x, hw))
    assert got.shape == hw
    np.testing.assert_allclose(got, torch_bicubic(x, hw), atol=1e-5, rtol=0)


def test_identity_size_returns_the_input():
    x = np.random.default_rng(1).random((5, 7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ij.resize_heatmap(x, (5, 7))), x, atol=1e-6)


def test_not_the_keys_kernel():
    """jax.image's cubic (Keys, A = -0.5) differs from torch's A = -0.75 by far more than the
    tolerance, so the parity test above can tell them apart."""
    x = np.random.default_rng(2).random((4, 4)).astype(np.float32)
    keys = np.asarray(jax.image.resize(x, (40, 50), "bicubic", antialias=False))
    assert np.abs(keys - torch_bicubic(x, (40, 50))).max() > 1e-3


def test_canvas_path_traced_size_one_compilation():
    """On a fixed canvas with the real size traced: the valid region equals torch on the real
    size, the rest is zero, and all sizes share one compilation."""
    canvas = 64
    traces = []

    def f(x, hw):
        traces.append(1)
        return ij.resize_heatmap(x, hw, canvas)

    fj = jax.jit(f)
    x = np.random.default_rng(3).random((4, 4)).astype(np.float32)
    for hw in [(40, 50), (64, 13), (17, 64), (64, 64)]:
        got = np.asarray(fj(x, jnp.asarray(hw, jnp.int32)))
        assert got.shape == (canvas, canvas)
        np.testing.assert_allclose(got[: hw[0], : hw[1]], torch_bicubic(x, hw), atol=1e-5)
        assert not got[hw[0]:].any() and not got[:, hw[1]:].any()
    assert len(traces) == 1


def test_pipeline_upsample_heat_is_torch_bicubic_then_minmax_then_stretch():
    cfg = IteRPrimEConfig()
    x = np.random.default_rng(4).random((4, 4)).astype(np.float32)
    hw = (37, 50)
    ref = torch_bicubic(x, hw)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    sig = 1 / (1 + np.exp(-20 * (ref - 0.5)))
    for first, want in ((False, ref), (True, sig / sig.max())):
        up, region = jax.jit(pipeline.upsample_heat, static_argnums=(2, 3))(
            x, jnp.asarray(hw, jnp.int32), 64, cfg, jnp.asarray(first))
        up = np.asarray(up)
        np.testing.assert_allclose(up[: hw[0], : hw[1]], want, atol=1e-5)
        assert np.asarray(region).sum() == hw[0] * hw[1] and not up[hw[0]:].any()


def test_bad_shape():
    with pytest.raises(ValueError, match="gh, gw"):
        ij.resize_heatmap(np.zeros((1, 4, 4)), (8, 8))
