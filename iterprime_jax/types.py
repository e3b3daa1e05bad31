"""Type aliases shared by the package.

`Params` is a model's parameter pytree: nested dicts keyed by the Flax module names (which
mirror the PyTorch state-dict names, e.g. ``params["text_encoder"]["encoder"]["layer_3"]
["crossattention"]["self"]["query"]["kernel"]``) with `jax.Array` or `numpy.ndarray` leaves
(float32; a model's compute dtype is in its config, not in the parameters). `Array` is
`jax.Array`; `DType` a JAX/numpy dtype such as ``jnp.float32`` or ``jnp.bfloat16``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import jax
import numpy as np

Array: TypeAlias = jax.Array
#: A parameter pytree: module name -> sub-tree or leaf array (see the module docstring).
Params: TypeAlias = Mapping[str, Any]
#: A dtype accepted by jax.numpy (``jnp.float32``, ``jnp.bfloat16``, ``np.dtype("float32")``).
DType: TypeAlias = type[Any] | np.dtype
