"""A small convolutional network for 8x8 digits: quick on 2 cores.

Two 3x3 convolutions, one pooling, one hidden dense layer: ~150k parameters,
so a parameter-server round trip per step stays cheap. No BatchNorm: its
moving statistics would be extra non-trainable state on the PS for no gain
at this size. Outputs logits.
"""
import ps_sync.keras_env  # noqa: F401

import tensorflow as tf


def build(num_classes=10, input_shape=(8, 8, 1), width=32, dropout=0.25):
    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", activation="relu",
                      name="conv1")(inputs)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu",
                      name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4 * width, activation="relu", name="hidden")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return tf.keras.Model(inputs, logits, name="small_cnn")
