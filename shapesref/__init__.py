"""ShapesRef: a procedural, seeded referring-image-segmentation benchmark.

Scenes of 2-6 coloured shapes (version 2 defaults: circle, square, triangle, cross; small or
large; one per cell of a 5x5 grid of 16-px cells whose outer ring stays empty, on flat or
low-contrast backgrounds; version 1's free layout with overlaps, more shapes and textured
backgrounds is ``ShapesRefConfig(grid=0, ...)``), with referring expressions of three kinds:

* ``attribute``: "the small green triangle", "green triangle" -- the shape alone is ambiguous
  (a same-shape distractor is present); the attribute combination is unique.
* ``position``: "the circle on the left", "top right square", "the leftmost red shape" -- the
  description matches two or more objects; the target is the extreme one (by a margin).
* ``relation``: "the red square below the blue circle" -- the description matches two or more
  objects besides the landmark, the landmark's description is unique, and exactly one of them
  stands in the relation (all others clearly do not).

Everything is drawn from ``numpy.random.Generator`` streams seeded by ``(seed, split, index)``, so
the same config gives byte-identical files. Object masks are pixel-exact: every shape is
rasterised as a boolean mask and painted by that mask, later objects occluding earlier ones; the
annotated mask of an object is its visible part. Circles are rasterised with numpy (pixel centre
inside the circle) and stored as RLE; polygonal shapes are rasterised with the COCO polygon
rasteriser itself (``pycocotools``), so an unoccluded one is stored as its polygon and decodes
exactly; an occluded one is stored as the RLE of its visible part.

``write_shapesref(root)`` writes the "refer" layout read by ``tfds_refcoco`` (config
``shapesref``)::

    root/shapesref/instances.json          COCO style: images, annotations, categories
    root/shapesref/refs(unc).p             pickle (protocol 2): list of refs
    root/shapesref/images/shapesref_XXXXXX.png
    root/shapesref/shapesref_config.json   stamp written last (config + counts)

Splits: ``train`` and ``val`` mix the three kinds, ``testA`` has attribute expressions only,
``testB`` position and relation expressions only.

For training an image-text-matching model: ``generate_scene``, ``make_ref`` / ``describe``,
``matching_pairs`` (positives and verified-false hard negatives) and ``sample_training_example``.
Expressions are also available as structures (`Expression`), with a parser for the generated
grammar (`parse_expression`) and a truth evaluator (`expression_truth`).

ShapesRef is a project beside the library `iterprime_jax` (which never imports it). Modules:
`config` (vocabulary, `ShapesRefConfig`), `grammar` (expressions, phrasing, parser), `scene`
(scene data), `truth` (semantics), `render` (scene generation and drawing, the seeded `choice`),
`pairs` (ITM training pairs), `writer` (the refer layout and the CLI `python -m shapesref`),
`by_kind` (results per expression kind with their chance level), `evaluation` (the evaluator's
hooks, `DATASET`, registered as the entry point ``iterprime_jax.datasets: shapesref``) and the
subpackage `training` (the shipped small model's training, `python -m shapesref.training`).
"""

from .config import (
    BACKGROUNDS,
    COLOUR_RGB,
    DATASET_DIR,
    DIRECTIONS,
    FORMAT_VERSION,
    IMAGE_DIR,
    INSTANCES_FILE,
    KINDS,
    OPPOSITE,
    POSITIONS,
    REFS_FILE,
    RELATIONS,
    ROUND_SHAPES,
    SHAPE_NAMES,
    SIZES,
    SPLIT_KINDS,
    SPLITS,
    STAMP_FILE,
    ShapesRefConfig,
)
from .grammar import (
    Desc,
    Expression,
    parse_expression,
    phrasings,
)
from .pairs import (
    matching_expressions,
    matching_pairs,
    perturbations,
    sample_training_example,
)
from .render import (
    describe,
    generate_scene,
    make_ref,
)
from .scene import (
    Ref,
    Scene,
    SceneObject,
)
from .truth import (
    candidate_expressions,
    expression_truth,
    refers_uniquely,
    relation_holds,
    relation_possible,
    resolve_expression,
)
from .writer import (
    category_id,
    decode_segmentation,
    encode_rle,
    generate_example,
    image_rng,
    is_complete,
    main,
    segmentation_of,
    write_shapesref,
)

__all__ = [
    "BACKGROUNDS",
    "COLOUR_RGB",
    "DATASET_DIR",
    "DIRECTIONS",
    "Desc",
    "Expression",
    "FORMAT_VERSION",
    "IMAGE_DIR",
    "INSTANCES_FILE",
    "KINDS",
    "OPPOSITE",
    "POSITIONS",
    "REFS_FILE",
    "RELATIONS",
    "ROUND_SHAPES",
    "Ref",
    "SHAPE_NAMES",
    "SIZES",
    "SPLITS",
    "SPLIT_KINDS",
    "STAMP_FILE",
    "Scene",
    "SceneObject",
    "ShapesRefConfig",
    "candidate_expressions",
    "category_id",
    "decode_segmentation",
    "describe",
    "encode_rle",
    "expression_truth",
    "generate_example",
    "generate_scene",
    "image_rng",
    "is_complete",
    "main",
    "make_ref",
    "matching_expressions",
    "matching_pairs",
    "parse_expression",
    "perturbations",
    "phrasings",
    "refers_uniquely",
    "relation_holds",
    "relation_possible",
    "resolve_expression",
    "sample_training_example",
    "segmentation_of",
    "write_shapesref",
]
