"""The files shipped inside the package (package data under ``iterprime_jax/data/``), found
wherever the package is installed or checked out, whatever the working directory:

- `VOCAB`: the bert-base-uncased WordPiece vocabulary (the small model's training tokenizer);
- `SHAPESREF_MODEL`: the shipped small ShapesRef ITM model (`iterprime_jax.load(SHAPESREF_MODEL)`).
  In a repository checkout ``iterprime_jax/data/shapesref-itm`` is a link to
  ``weights/shapesref-itm``; a wheel (``pip install .`` from a path, a git URL or a built
  wheel) carries a copy of it.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

DATA = Path(str(importlib.resources.files("iterprime_jax") / "data"))
VOCAB = DATA / "bert-base-uncased-vocab.txt"
SHAPESREF_MODEL = DATA / "shapesref-itm"
#: Where `SHAPESREF_MODEL` lives in a repository checkout (how docs and ``--help`` name it).
SHAPESREF_MODEL_NAME = "weights/shapesref-itm"
