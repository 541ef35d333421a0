"""TensorBoard scalars without the tensorboard package.

`tf.summary.scalar` lives in tensorboard, which is not a dependency; the
core op `tf.summary.write` with the scalars plugin's metadata writes the
same event records, which TensorBoard reads when it is installed elsewhere.
"""
import threading

import ps_sync.keras_env  # noqa: F401

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class ScalarLog:
    """One event-file writer shared by the training threads."""

    def __init__(self, directory):
        self.directory = directory
        self._writer = tf.summary.create_file_writer(directory)
        self._lock = threading.Lock()

    def scalars(self, values, step):
        """Write {tag: number} at `step` (None values are skipped)."""
        with self._lock, self._writer.as_default():
            for tag, value in values.items():
                if value is not None:
                    tf.summary.write(tag, tf.constant(float(value)),
                                     step=int(step), metadata=_SCALAR_METADATA)
            self._writer.flush()

    def close(self):
        with self._lock:
            self._writer.close()
