"""Shared fixtures: a tiny random ITM model saved and loaded like a real converted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import pytest

import iterprime_jax as ij
from iterprime_jax.models.blip.modeling import init_params
from iterprime_jax.models.convert import save_params
from iterprime_jax.shipped import VOCAB as SHIPPED_VOCAB

DATA = Path(__file__).parent / "data"

# Every test computes at float32 matmul precision, also where it calls the pure functions
# directly (the public functions enter their model's `precision`, "highest" by default): on
# a GPU or TPU the parity tolerances (tests/float32.py) hold only there (docs/precision.md).
jax.config.update("jax_default_matmul_precision", "highest")
VOCAB = SHIPPED_VOCAB  # bert-base-uncased, the package's own copy


def tiny_blip_config(image_size: int = 32, patch: int = 8) -> ij.BlipConfig:
    return ij.BlipConfig(
        vision=ij.VisionConfig(image_size=image_size, patch_size=patch, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4),
        text=ij.TextConfig(vocab_size=30524, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64, encoder_hidden_size=32),
        projection_dim=16)


def write_tiny_model(path: Path, seed: int = 0, **kw) -> Path:
    cfg = tiny_blip_config(**kw)
    params = init_params(cfg, jax.random.PRNGKey(seed))
    # Scale the init up so cross-attention is not uniform (gradients carry signal).
    params = jax.tree_util.tree_map(lambda x: x * 4.0 if x.ndim == 2 else x, params)
    save_params(path, params, cfg)
    shutil.copy(VOCAB, path / "vocab.txt")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return ij.load(tiny_model_dir)
