"""Training the small ShapesRef ITM model (BLIP architecture, tiny config) and its diagnostics.

`config` (the recipe, `TrainConfig`), `data` (the scene pool, relation and position statements,
batches), `stream` (a pool that grows in worker processes while training runs, the training
CLI's ``--stream-workers`` for an accelerator), `model_init` (initial parameters), `pretrain`
(image-level presence pretraining of the ViT), `trainer` (optimiser, the training loop, saving,
the CLI `python -m shapesref.training --out DIR`) and `diagnostics` (held-out ITM accuracy,
per hard-negative type, the localisation probe that picks the Grad-CAM layer).
"""

from .config import DEFAULT_VOCAB, LOG_NAME, TrainConfig, make_tokenizer, model_config
from .data import (
    Pool,
    PoolLike,
    build_pool,
    caption_pool,
    expression_false,
    false_variants,
    normalise_images,
    position_statements,
    relation_pairs,
    swaps,
    tokenize_prompts,
)
from .diagnostics import (
    diagnose,
    evaluate_itm,
    itm_by_negative_kind,
    localisation_probe,
    predict_match,
    recommended_method,
)
from .model_init import init_model, posemb_sincos_2d
from .pretrain import load_vision, pretrain_vision, save_vision
from .stream import StreamPool
from .trainer import (
    calibrate_steps,
    diagnose_saved,
    lr_schedule,
    main,
    make_optimizer,
    save_model,
    train,
)

__all__ = [
    "DEFAULT_VOCAB", "LOG_NAME", "Pool", "PoolLike", "StreamPool", "TrainConfig", "build_pool",
    "calibrate_steps", "caption_pool", "diagnose", "diagnose_saved", "evaluate_itm",
    "expression_false", "false_variants", "init_model", "itm_by_negative_kind", "load_vision",
    "localisation_probe", "lr_schedule", "main", "make_optimizer", "make_tokenizer",
    "model_config", "normalise_images", "position_statements", "posemb_sincos_2d",
    "predict_match", "pretrain_vision", "recommended_method", "relation_pairs", "save_model",
    "save_vision", "swaps", "tokenize_prompts", "train",
]
