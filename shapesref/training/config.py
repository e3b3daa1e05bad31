"""The training recipe of the small ShapesRef ITM model (`TrainConfig`), its BLIP config
(`model_config`) and tokenizer (`make_tokenizer`), and the names of the files it writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from iterprime_jax.models.blip.config import BlipConfig, TextConfig, VisionConfig
from iterprime_jax.shipped import VOCAB

#: bert-base-uncased WordPiece vocabulary, shipped inside the package (package data).
DEFAULT_VOCAB = VOCAB
LOG_NAME = "training_log.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The whole recipe; defaults are the shipped model's.

    Attributes:
      steps, batch_size, lr, warmup, weight_decay, clip: AdamW with linear warmup + cosine decay
        (the schedule spans `caption_steps + steps`).
      width: hidden size of both encoders (MLP 4x); heads: attention heads of both.
      vision_layers, text_layers: depth (every text layer has cross-attention).
      patch_size: ViT patch (80x80 images, 16-px patches: the 5x5 cells of ShapesRef v2).
      max_text_length: token bucket for training (prompt incl. [CLS]/[SEP]).
      max_position_embeddings: text positions (>= the pipeline's max_text_length, 40).
      pool_scenes: scenes generated for training; refs_per_scene: targets described per scene.
      other_neg_frac: share of negatives that are expressions of other scenes.
      attribute_frac: share of attribute scenes (the rest: position and relation, equally).
      size_negatives, relation_negatives: extra negatives per described target that swap only
        the size word / the relation (certified false), on top of `max_negatives` (the words a
        model trained without them ignores).
      relation_pairs: per scene, up to this many true relation statements about any two of its
        objects ("the red circle above the small square") and twice as many certified-false
        ones (other relation, roles swapped), `data.relation_pairs`: relation words with
        certified negatives in every scene, not only where a referring expression allows them.
      position_statements: per scene, up to this many true and as many certified-false
        absolute position statements about objects a description singles out ("the red circle
        on the left" where it is the only red circle), `data.position_statements`.
      init_scale: multiplier on the default (lecun-normal) Dense init.
      pos_init: vision position embeddings' init: "normal" (std 1/sqrt(width)) or "sincos"
        (fixed-frequency 2D sine/cosine of the patch row and column, as in MAE/big_vision;
        still trained); pos_scale multiplies it (larger: the patch tokens keep more of where
        they are through the layers and the pretraining).
      caption_steps, caption_scenes: curriculum: the first `caption_steps` steps match
        object captions ("red circle", "the small cross": any description of a present object
        vs. combinations absent from the scene) on a pool of `caption_scenes` scenes, before
        the referring expressions and their hard negatives.
      pretrain_steps, pretrain_lr, pretrain_fresh, pretrain_buffer: image-level multi-label
        pretraining of the ViT (`training.pretrain`): steps, peak lr, new scenes per step,
        scenes in the buffer batches are drawn from.
      seed: seeds data, init and batch order.
    """

    steps: int = 16000
    batch_size: int = 64
    lr: float = 7e-4
    warmup: int = 300
    weight_decay: float = 0.01
    clip: float = 1.0
    width: int = 64
    heads: int = 4
    vision_layers: int = 2
    text_layers: int = 3
    patch_size: int = 16
    image_size: int = 80
    max_text_length: int = 24
    max_position_embeddings: int = 64
    projection_dim: int = 32
    pool_scenes: int = 24000
    refs_per_scene: int = 2
    max_negatives: int = 8
    other_neg_frac: float = 0.25
    attribute_frac: float = 0.34
    size_negatives: int = 2
    relation_negatives: int = 4
    relation_pairs: int = 12
    position_statements: int = 4
    init_scale: float = 1.0
    pos_init: str = "sincos"
    pos_scale: float = 3.0
    caption_steps: int = 500
    caption_scenes: int = 2000
    pretrain_steps: int = 1500
    pretrain_lr: float = 1e-3
    pretrain_fresh: int = 16
    pretrain_buffer: int = 2048
    seed: int = 0
    log_every: int = 100
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From `to_dict`'s output (a training log's "recipe"); keys of fields this version
        does not have are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def model_config(recipe: TrainConfig) -> BlipConfig:
    """The BLIP config of the small model (bert-base-uncased vocabulary, 30524 like BLIP)."""
    w = recipe.width
    vision = VisionConfig(image_size=recipe.image_size, patch_size=recipe.patch_size, hidden_size=w,
                          intermediate_size=4 * w, num_hidden_layers=recipe.vision_layers,
                          num_attention_heads=recipe.heads)
    text = TextConfig(vocab_size=30524, hidden_size=w, intermediate_size=4 * w,
                      num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.heads,
                      max_position_embeddings=recipe.max_position_embeddings,
                      encoder_hidden_size=w)
    return BlipConfig(vision=vision, text=text, projection_dim=recipe.projection_dim)


def make_tokenizer(vocab: str | Path = DEFAULT_VOCAB) -> Any:
    """Slow BertTokenizer over a WordPiece vocab file (the fast one maps all to [UNK])."""
    from transformers import BertTokenizer

    return BertTokenizer(str(vocab), do_lower_case=True)
