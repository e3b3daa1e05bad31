"""TFDS builder ``ref_coco_masks``: RefCOCO / RefCOCO+ / RefCOCOg / ShapesRef with masks.

One example per referred object (ref), carrying its sentences, its ground-truth mask and every
instance mask of the image (the oracle proposals). Built from the "refer" layout
(lichengunc/refer) placed by hand in ``manual_dir``; written as array_record and read with
``as_data_source()`` so no TensorFlow is needed::

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

from tfds_refcoco import refer

_DESCRIPTION = """\
Referring-expression segmentation datasets in the refer layout (lichengunc/refer): RefCOCO
(UNC splits), RefCOCO+ (UNC), RefCOCOg (UMD and Google splits) over COCO train2014 images, and
ShapesRef (procedural, same layout). One example per referred object, ordered by image so that
one image's refs are consecutive; every COCO instance mask of the image is included as an
oracle proposal.
"""

_CITATION = """\
@inproceedings{yu2016modeling, title={Modeling Context in Referring Expressions},
  author={Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C and
  Berg, Tamara L}, booktitle={ECCV}, year={2016}}
@inproceedings{mao2016generation,
  title={Generation and Comprehension of Unambiguous Object Descriptions},
  author={Mao, Junhua and Huang, Jonathan and Toshev, Alexander and Camburu, Oana and
  Yuille, Alan L and Murphy, Kevin}, booktitle={CVPR}, year={2016}}
"""

FILE_FORMAT = "array_record"


class RefCocoMasksConfig(tfds.core.BuilderConfig):
    """A config knows its dataset directory, refs file name and image directory."""

    def __init__(self, *, name: str, layout: refer.ReferLayout, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.layout = layout


def _config(name: str, description: str) -> RefCocoMasksConfig:
    return RefCocoMasksConfig(name=name, layout=refer.LAYOUTS[name], description=description)


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
        _config("shapesref", "ShapesRef: procedural shapes written in the refer layout."),
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
"""

    def _info(self) -> tfds.core.DatasetInfo:
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
