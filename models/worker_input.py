"""Which worker is this input pipeline for, and which seed does it get.

Every worker reads the whole training set in an order of its own (as TF1's
Inception pipeline did): with disjoint shards a straggler's shard would be
under-represented, since most of its pushes are dropped. The order is a pure
function of (seed, worker index, epoch), so runs are reproducible.

Under ParameterServerStrategy `input_context.input_pipeline_id` is always 0
(there is one input pipeline per worker "in sync"), so the index has to come
from `experimental_get_current_worker_index()`. That call is only valid in a
tf.function that the ClusterCoordinator runs on a worker; the coordinator
always traces a dataset_fn inside a tf.function, other strategies call it
eagerly, which is how `resolve_worker_index` tells the two apart.
"""
import ps_sync.keras_env  # noqa: F401

import tensorflow as tf


def resolve_worker_index(input_context=None, worker_index=None):
    """The worker index as an int64 scalar tensor (or int).

    An explicit `worker_index` wins; inside a tf.function (how the
    ClusterCoordinator builds per-worker datasets) it is the coordinator's
    worker index, evaluated on each worker at call time; otherwise
    `input_context.input_pipeline_id`, or 0 without a context.
    """
    if worker_index is not None:
        return tf.cast(worker_index, tf.int64)
    if tf.inside_function():
        return tf.cast(
            tf.distribute.coordinator.experimental_get_current_worker_index(),
            tf.int64)
    if input_context is not None:
        return tf.constant(input_context.input_pipeline_id, tf.int64)
    return tf.constant(0, tf.int64)


def stateless_seed(seed, worker_index, epoch=None):
    """A [2] int64 stateless-RNG seed unique to (seed, worker, epoch)."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(worker_index, tf.int64)])
    if epoch is None:
        return key
    return tf.random.experimental.stateless_fold_in(
        key, tf.cast(epoch, tf.int64))


def op_seed(seed, worker_index):
    """A scalar int64 seed for stateful tf.data ops (shuffle) of one worker.

    Mixes the two with a large odd multiplier, so that (seed, worker) pairs
    that are close do not collide (seed 1 worker 0 vs seed 0 worker 1).
    """
    return (tf.cast(seed, tf.int64) * 1000003
            + tf.cast(worker_index, tf.int64) + 1)


def permuted_indices(num_examples, seed, worker_index):
    """An endless dataset of example indices: one fresh permutation of
    range(num_examples) per epoch, so every worker sees every example once
    per epoch, in an order of its own."""
    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64),
            seed=stateless_seed(seed, worker_index, epoch))
        return tf.data.Dataset.from_tensor_slices(order)
    return tf.data.Dataset.range(2**62).flat_map(one_epoch)
