"""Cross-entropy on integer labels with label smoothing.

tf-keras' SparseCategoricalCrossentropy has no label smoothing and the
paper-era Inception recipe uses 0.1, while every input pipeline here yields
integer labels (one-hot ImageNet labels would be 1000x larger per batch).
"""
import ps_sync.keras_env  # noqa: F401

import tensorflow as tf


class SparseSmoothedCrossentropy(tf.keras.losses.Loss):
    """Categorical cross-entropy against one_hot(y_true), smoothed: the
    target is (1 - s) * one_hot + s / num_classes."""

    def __init__(self, label_smoothing=0.0, from_logits=True,
                 reduction=tf.keras.losses.Reduction.AUTO,
                 name="sparse_smoothed_crossentropy"):
        super().__init__(reduction=reduction, name=name)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        one_hot = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return tf.keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=self.from_logits,
            label_smoothing=self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing,
                      from_logits=self.from_logits)
        return config
