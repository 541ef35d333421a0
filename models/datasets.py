"""Datasets by name, one interface for the training program.

    fn = datasets.per_worker_dataset_fn("digits", batch_size=32, seed=0)
    fn = datasets.per_worker_dataset_fn("imagenet2012", 32, seed=0,
                                        data_dir=d, image_size=299)
    ev = datasets.eval_dataset("imagenet_tfrecord", 100, data_dir=d)

Names: "digits" (scikit-learn, no data dir), "imagenet2012" (TFDS, prepared
under data_dir), "imagenet_tfrecord" (tensorflow/models shards in data_dir).
`batch_size` is per worker. Wrong names and data dirs raise ValueError.
"""
import dataclasses
from typing import Optional, Tuple

import ps_sync.keras_env  # noqa: F401

from models import digits, imagenet

# ILSVRC 2012 training images, for epochs counted in examples when the
# TFRecord shards are not counted (counting them means reading them all).
IMAGENET_TRAIN_EXAMPLES = 1281167


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: Optional[Tuple[int, int, int]]  # None: set by image_size
    imagenet_source: Optional[str] = None         # "tfds" / "tfrecord"
    description: str = ""


DATASETS = {
    spec.name: spec for spec in [
        DatasetSpec("digits", digits.NUM_CLASSES, digits.INPUT_SHAPE,
                    description="scikit-learn 8x8 digits, fixed split, "
                                "no download"),
        DatasetSpec("imagenet2012", imagenet.NUM_CLASSES, None, "tfds",
                    description="TFDS imagenet2012 prepared in data_dir"),
        DatasetSpec("imagenet_tfrecord", imagenet.NUM_CLASSES, None,
                    "tfrecord",
                    description="tensorflow/models inception TFRecord "
                                "shards in data_dir"),
    ]
}


def names():
    return sorted(DATASETS)


def get_spec(name):
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError("unknown dataset %r; known datasets: %s"
                         % (name, ", ".join(names()))) from None


def _imagenet_args(spec, data_dir, image_size):
    if not data_dir:
        raise ValueError("dataset %r needs a data dir (%s)"
                         % (spec.name, spec.description))
    return spec.imagenet_source, data_dir, image_size or 299


def input_shape(name, image_size=None):
    """The shape of one input image: digits' own, or image_size^2 x 3."""
    spec = get_spec(name)
    if spec.image_shape is not None:
        return spec.image_shape
    return (image_size or 299, image_size or 299, 3)


def per_worker_dataset_fn(name, batch_size, seed=0, data_dir=None,
                          image_size=None):
    """A dataset_fn for DatasetCreator: each worker reads the whole
    training set in its own order (see models.worker_input)."""
    spec = get_spec(name)
    if spec.imagenet_source is None:
        return digits.per_worker_dataset_fn(batch_size, seed)
    source, data_dir, size = _imagenet_args(spec, data_dir, image_size)
    return imagenet.per_worker_dataset_fn(source, data_dir, batch_size, size,
                                          seed)


def eval_dataset(name, batch_size, data_dir=None, image_size=None):
    """The held-out set, once, in order: digits' test split or ImageNet's
    validation split."""
    spec = get_spec(name)
    if spec.imagenet_source is None:
        return digits.eval_dataset(batch_size)
    source, data_dir, size = _imagenet_args(spec, data_dir, image_size)
    return imagenet.eval_dataset(source, data_dir, batch_size, size)


def num_train_examples(name, data_dir=None):
    """Examples per epoch, to turn "every 2 epochs" into update counts."""
    spec = get_spec(name)
    if spec.imagenet_source is None:
        return len(digits.load().y_train)
    if spec.imagenet_source == "tfds":
        source, data_dir, _ = _imagenet_args(spec, data_dir, None)
        return imagenet.tfds_num_examples(data_dir, "train")
    return IMAGENET_TRAIN_EXAMPLES
