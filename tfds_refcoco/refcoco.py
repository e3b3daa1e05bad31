"""TFDS builder ``ref_coco_masks``: RefCOCO/+/g, ShapesRef and PhraseCut with masks.

Refer-layout configs: one example per referred object (ref), carrying its sentences, its
ground-truth mask and every instance mask of the image (the oracle proposals), built from the
"refer" layout (lichengunc/refer) placed by hand in ``manual_dir``. The ``phrasecut`` config
(VGPhraseCut v0 in its official layout, see `tfds_refcoco.phrasecut`) has its own features: one
example per task (phrase), its union-of-instances mask and its phrase structure, no proposals.
Written as array_record and read with ``as_data_source()`` so no TensorFlow is needed::

    from tfds_refcoco import load_split
    ds = load_split("refcoco_unc", "val", manual_dir="~/refer_data", data_dir="~/tfds")
    ex = ds[0]  # dict of numpy arrays
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tfds_refcoco import phrasecut, refer

_DESCRIPTION = """\
Referring-expression segmentation datasets in the refer layout (lichengunc/refer): RefCOCO
(UNC splits), RefCOCO+ (UNC), RefCOCOg (UMD and Google splits) over COCO train2014 images, and
ShapesRef (procedural, same layout). One example per referred object, ordered by image so that
one image's refs are consecutive; every COCO instance mask of the image is included as an
oracle proposal. The phrasecut config holds VGPhraseCut v0 (Visual Genome images): one example
per phrase, its mask the union of the referred instances, no proposals.
"""

_CITATION = """\
@inproceedings{wu2020phrasecut, title={PhraseCut: Language-based Image Segmentation in the
  Wild}, author={Wu, Chenyun and Lin, Zhe and Cohen, Scott and Bui, Trung and Maji, Subhransu},
  booktitle={CVPR}, year={2020}}
@inproceedings{yu2016modeling, title={Modeling Context in Referring Expressions},
  author={Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C and
  Berg, Tamara L}, booktitle={ECCV}, year={2016}}
@inproceedings{mao2016generation,
  title={Generation and Comprehension of Unambiguous Object Descriptions},
  author={Mao, Junhua and Huang, Jonathan and Toshev, Alexander and Camburu, Oana and
  Yuille, Alan L and Murphy, Kevin}, booktitle={CVPR}, year={2016}}
"""

FILE_FORMAT = "array_record"


PHRASECUT = "phrasecut"


class RefCocoMasksConfig(tfds.core.BuilderConfig):
    """A refer-layout config knows its dataset directory, refs file name and image directory;
    the ``phrasecut`` config has no layout (it reads `tfds_refcoco.phrasecut`'s)."""

    def __init__(self, *, name: str, layout: refer.ReferLayout | None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.layout = layout


def _config(name: str, description: str, version: str | None = None,
            release_notes: dict[str, str] | None = None) -> RefCocoMasksConfig:
    return RefCocoMasksConfig(name=name, layout=refer.LAYOUTS[name], description=description,
                              version=version, release_notes=release_notes)


def canonical_config_name(name: str) -> str:
    """``refcoco+_unc`` -> ``refcoco_plus_unc``; other known names are returned unchanged."""
    return refer.canonical_config_name(name)


class RefCocoMasks(tfds.core.GeneratorBasedBuilder):
    """Refer-layout datasets with per-ref masks and all instance masks as proposals."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: one example per ref, masks and proposals."}

    BUILDER_CONFIGS = [
        _config("refcoco_unc", "RefCOCO, UNC splits (train/val/testA/testB)."),
        _config("refcoco_plus_unc", "RefCOCO+, UNC splits (alias refcoco+_unc)."),
        _config("refcocog_umd", "RefCOCOg, UMD splits (train/val/test)."),
        _config("refcocog_google", "RefCOCOg, Google splits (train/val)."),
        _config("shapesref", "ShapesRef: procedural shapes written in the refer layout.",
                version="2.0.0",
                release_notes={"2.0.0": "ShapesRef version 2 (80-px images, 5x5 grid of 16-px "
                                        "cells, four shapes); stale version-1 builds are "
                                        "rebuilt."}),
        RefCocoMasksConfig(
            name=PHRASECUT, layout=None,
            description="VGPhraseCut v0 (official layout): one example per task (phrase), the "
                        "union mask of its instances, its phrase structure; no proposals."),
    ]

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Place the refer-layout files in `manual_dir` (default ~/tensorflow_datasets/downloads/manual):

  cd <manual_dir>
  wget https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip
  wget https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco+.zip
  wget https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcocog.zip
  wget http://images.cocodataset.org/zips/train2014.zip   # COCO train2014 images, 13 GB
  for z in refcoco.zip refcoco+.zip refcocog.zip train2014.zip; do unzip -q "$z"; done

Resulting layout (each zip also holds its instances.json):

  <manual_dir>/refcoco/refs(unc).p   <manual_dir>/refcoco/instances.json
  <manual_dir>/refcoco+/refs(unc).p  <manual_dir>/refcoco+/instances.json
  <manual_dir>/refcocog/refs(umd).p  <manual_dir>/refcocog/refs(google).p
  <manual_dir>/refcocog/instances.json
  <manual_dir>/train2014/COCO_train2014_000000000009.jpg ...

Only the files of the config being built are needed. The `shapesref` config reads
<manual_dir>/shapesref/refs(unc).p, <manual_dir>/shapesref/instances.json and images in
<manual_dir>/shapesref/images/, as written by the ShapesRef generator.

The `phrasecut` config reads VGPhraseCut v0 as the authors' downloader
(github.com/ChenyunWu/PhraseCutDataset, `python download_dataset.py -s val_test_miniv`) lays it
out, in <manual_dir>/VGPhraseCut_v0/ (or in <manual_dir> itself):

  image_data_split.json  refer_val.json  refer_test.json  refer_miniv.json  [refer_train.json]
  images/<image_id>.jpg

Every split whose refer_<split>.json is present is built (train: 310k tasks, 71k images).
"""

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config.name == PHRASECUT:
            return self.dataset_info_from_configs(
                features=_phrasecut_features(),
                description=_DESCRIPTION,
                citation=_CITATION,
                homepage="https://github.com/ChenyunWu/PhraseCutDataset",
                disable_shuffling=True,  # keep the (image_id, file order) order
            )
        uint8_maps = {"dtype": np.uint8, "encoding": "zlib"}
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "file_name": tfds.features.Text(),
                "image_id": tfds.features.Scalar(np.int64),
                "ref_id": tfds.features.Scalar(np.int64),
                "ann_id": tfds.features.Scalar(np.int64),
                "category_id": tfds.features.Scalar(np.int64),
                "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),  # COCO x, y, w, h
                "sentences": tfds.features.Sequence(tfds.features.Text()),
                "sent_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "mask": tfds.features.Tensor(shape=(None, None), **uint8_maps),
                "proposals": tfds.features.Tensor(shape=(None, None, None), **uint8_maps),
                "proposal_ann_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "proposal_category_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            }
        )
        return self.dataset_info_from_configs(
            features=features,
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/lichengunc/refer",
            disable_shuffling=True,  # keep (image_id, ref_id) order
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(os.fspath(dl_manager.manual_dir))
        if self.builder_config.name == PHRASECUT:
            data = phrasecut.load_phrasecut(root)
            return {s: phrasecut.iter_examples(data, s) for s in data.splits()}
        layout = self.builder_config.layout
        data = refer.load_refer(root, layout)
        splits = data.splits()
        if not splits:
            raise refer.ReferFormatError(
                f"{data.refs_path} holds no ref in any of the splits {refer.SPLITS}"
            )
        return {split: self._generate_examples(root, data, split) for split in splits}

    def _generate_examples(self, root: Path, data: refer.ReferData, split: str):
        yield from refer.iter_examples(root, self.builder_config.layout, data, split)


def _phrasecut_features() -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "file_name": text(),
            "image_id": tfds.features.Scalar(np.int64),
            "task_id": text(),
            "task_index": tfds.features.Scalar(np.int64),  # position in the split
            "phrase": text(),
            "name": text(),
            "attributes": tfds.features.Sequence(text()),
            "relation_predicates": tfds.features.Sequence(text()),
            "relation_objects": tfds.features.Sequence(text()),  # aligned with predicates
            "relation_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "phrase_type": text(),
            "ann_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "instance_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "mask": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
            "mask_area": tfds.features.Scalar(np.int64),
        }
    )


def make_builder(config_name: str, data_dir: str | os.PathLike | None = None) -> RefCocoMasks:
    """The builder of one config (alias names accepted), writing array_record files."""
    return RefCocoMasks(
        config=canonical_config_name(config_name),
        data_dir=None if data_dir is None else os.fspath(data_dir),
        file_format=FILE_FORMAT,
    )


def load_split(
    config_name: str,
    split: str,
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """Builds the config if needed and returns the split as a random-access data source.

    ``ds[i]`` is a dict of numpy values (see ``RefCocoMasks._info``); ``len(ds)`` is the number
    of refs in the split.
    """
    builder = make_builder(config_name, data_dir)
    if manual_dir is not None:
        manual_dir = os.fspath(Path(manual_dir).expanduser())
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        file_format=FILE_FORMAT,
    )
    return builder.as_data_source(split=split)
