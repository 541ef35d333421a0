"""scikit-learn's handwritten digits: 1797 8x8 greyscale images, 10 classes.

The data ship inside scikit-learn, so the default job needs no download. The
train/test split is fixed (stratified, fixed seed): every run, worker and
evaluator sees the same split.

    data = digits.load()
    model.fit(tf.keras.utils.experimental.DatasetCreator(
        digits.per_worker_dataset_fn(batch_size=32, seed=0)), ...)
    model.evaluate(digits.eval_dataset(batch_size=256))
"""
import collections

import ps_sync.keras_env  # noqa: F401

import numpy as np
import tensorflow as tf

from models import worker_input

NUM_CLASSES = 10
INPUT_SHAPE = (8, 8, 1)
TEST_FRACTION = 0.2
SPLIT_SEED = 0

Digits = collections.namedtuple("Digits", "x_train y_train x_test y_test")

_cache = {}


def load(test_fraction=TEST_FRACTION, split_seed=SPLIT_SEED):
    """The fixed split as numpy arrays: x float32 (N, 8, 8, 1) in [0, 1],
    y int32 (N,). 1437 training and 360 test examples by default."""
    key = (test_fraction, split_seed)
    if key not in _cache:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        raw = load_digits()
        # Pixels are ink counts 0..16; scale to [0, 1].
        x = (raw.images.astype(np.float32) / 16.0)[..., np.newaxis]
        y = raw.target.astype(np.int32)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, random_state=split_seed,
            stratify=y)
        _cache[key] = Digits(x_train, y_train, x_test, y_test)
    return _cache[key]


def train_dataset(batch_size, seed=0, worker_index=0, data=None):
    """One worker's endless training stream: the whole training set, in a
    fresh order each epoch that depends on (seed, worker_index), batched
    with drop_remainder (fixed shapes)."""
    data = data or load()
    x = tf.constant(data.x_train)
    y = tf.constant(data.y_train)
    indices = worker_input.permuted_indices(len(data.y_train), seed,
                                            worker_index)
    return (indices.batch(batch_size, drop_remainder=True)
            .map(lambda i: (tf.gather(x, i), tf.gather(y, i)),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(2))


def per_worker_dataset_fn(batch_size, seed=0, worker_index=None):
    """A `dataset_fn(input_context)` for `DatasetCreator` or
    `ClusterCoordinator.create_per_worker_dataset`: each worker gets
    `train_dataset(batch_size, seed, <its worker index>)`.

    `batch_size` is per worker. Pass `worker_index` only to pin it (tests).
    """
    data = load()  # on the coordinator, once; the constants ship in the graph

    def dataset_fn(input_context=None):
        index = worker_input.resolve_worker_index(input_context, worker_index)
        return train_dataset(batch_size, seed, index, data)

    return dataset_fn


def eval_dataset(batch_size, data=None):
    """The test set, once, in a fixed order, last batch kept."""
    data = data or load()
    return tf.data.Dataset.from_tensor_slices(
        (data.x_test, data.y_test)).batch(batch_size)
