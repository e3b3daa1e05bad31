"""What `iterprime_jax.load` returns, one type per role: `Model` (an image-text matching
model, BLIP or ALBEF, with its tokenizer) and `ProposerModel` (the Mask2Former proposal
network); and the matmul precision they run at (`MATMUL_PRECISIONS`, `matmul_precision`).

Which type a converted directory loads into is declared by its architecture
(`iterprime_jax.models.architectures`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..types import Params
from .albef.config import AlbefConfig
from .blip.config import BlipConfig
from .mask2former.config import Mask2FormerConfig

#: Matmul precisions a model may run at (`load(..., precision=)`), as
#: `jax.default_matmul_precision` names them. "highest": float32 products (several bf16 passes
#: on a TPU, no TF32 on a GPU): the numbers the parity tests check (1e-4 against PyTorch);
#: "high": about 3 bf16 passes on a TPU / TF32 on a GPU (faster, ~1e-3 relative);
#: "default": the backend's default, one bf16 pass on a TPU / TF32 on a GPU (fastest,
#: ~1e-2 relative: heat maps move, rarely a selection). On a CPU all three are float32.
MATMUL_PRECISIONS = ("highest", "high", "default")

#: The config of an image-text matching model (what the method's functions take).
ItmConfig = BlipConfig | AlbefConfig


def check_precision(precision: str, source: str = "precision") -> str:
    """`precision` if it is one of MATMUL_PRECISIONS, else a ValueError naming `source`."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"{source} must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    return precision


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded image-text matching model (BLIP or ALBEF ITM): pass `.params` and `.config`
    to the pure functions; `tokenizer` turns its sentences into ids. `precision`: the matmul
    precision the public functions (`segment*`, the evaluator) trace under
    (MATMUL_PRECISIONS)."""

    config: ItmConfig
    params: Params
    tokenizer: Any  # a transformers BertTokenizer
    path: Path
    precision: str = "highest"


@dataclasses.dataclass(frozen=True)
class ProposerModel:
    """A loaded Mask2Former proposal network (no tokenizer): what `Proposer` / `propose`
    take. `precision` as `Model.precision`."""

    config: Mask2FormerConfig
    params: Params
    path: Path
    precision: str = "highest"


def matmul_precision(model: Any) -> Any:
    """Context manager: `jax.default_matmul_precision` at the model's `precision` (a Model,
    a ProposerModel, or a precision name; "highest" for objects without one). It is part of
    the jit cache key: each precision has its own compilations."""
    import jax

    name = model if isinstance(model, str) else getattr(model, "precision", "highest")
    return jax.default_matmul_precision(check_precision(name, "Model.precision"))
