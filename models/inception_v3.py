"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture
for Computer Vision") with its auxiliary classifier, in tf-keras layers.

Layer for layer the TF-slim `inception_v3` that the paper-era distributed
recipe trained (tensorflow/models inception / slim): every convolution is
conv (no bias) + BatchNorm (no scale, decay 0.9997, epsilon 1e-3) + ReLU,
truncated-normal(0.1) initialisation, L2 weight decay 4e-5, dropout keep 0.8
before the logits, the auxiliary head on Mixed_6e. Built from scratch, never
downloads weights.

`depth_multiplier` scales every layer's filters (at least `min_depth`), and
pooling/conv kernels that are larger than a small input's feature map shrink
to fit (as slim's `_reduced_kernel_size_for_small_input` does), which is how
the reduced-resolution variant (75x75) is built from the same code.

The model has two outputs, `logits` and `aux_logits` (both unnormalised);
`build(..., aux_logits=False)` gives the single-output network.
"""
import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

layers = tf.keras.layers

DEFAULT_INPUT_SHAPE = (299, 299, 3)
MIN_INPUT_SIZE = 75          # smallest input for which every valid conv fits
BATCH_NORM_MOMENTUM = 0.9997
BATCH_NORM_EPSILON = 1e-3
# slim's l2_regularizer(w) adds w * sum(v**2) / 2; Keras' l2(w) adds w *
# sum(v**2), so Keras gets half of the paper's 4e-5.
WEIGHT_DECAY = 4e-5


class _Builder:
    """Holds the hyper-parameters so the block code below reads like slim."""

    def __init__(self, depth_multiplier, min_depth, weight_decay, bn_momentum):
        if depth_multiplier <= 0:
            raise ValueError("depth_multiplier must be > 0, got %r"
                             % depth_multiplier)
        self.depth_multiplier = depth_multiplier
        self.min_depth = min_depth
        self.regularizer = (tf.keras.regularizers.l2(weight_decay / 2.0)
                            if weight_decay else None)
        self.bn_momentum = bn_momentum

    def depth(self, d):
        return max(int(d * self.depth_multiplier), self.min_depth)

    def conv(self, x, filters, kernel, strides=1, padding="same", name=None,
             stddev=0.1):
        """conv + BN + ReLU, `filters` before the depth multiplier."""
        x = layers.Conv2D(
            self.depth(filters), kernel, strides=strides, padding=padding,
            use_bias=False, name=name,
            kernel_initializer=tf.keras.initializers.TruncatedNormal(
                stddev=stddev),
            kernel_regularizer=self.regularizer)(x)
        x = layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=BATCH_NORM_EPSILON,
            scale=False, name=name + "/bn")(x)
        return layers.Activation("relu", name=name + "/relu")(x)

    def logits(self, x, num_classes, name, stddev):
        """1x1 conv to classes (bias, no BN) on a 1x1 map, then flatten."""
        x = layers.Conv2D(
            num_classes, 1, name=name + "/conv",
            kernel_initializer=tf.keras.initializers.TruncatedNormal(
                stddev=stddev),
            kernel_regularizer=self.regularizer)(x)
        return layers.Flatten(name=name)(x)


def _fit_kernel(x, kernel):
    """`kernel` shrunk to the spatial size of `x` where it is larger."""
    h, w = x.shape[1], x.shape[2]
    return (min(kernel[0], h), min(kernel[1], w))


def _avg_pool_same(x, name):
    return layers.AveragePooling2D(3, strides=1, padding="same", name=name)(x)


def _mixed_35(b, x, pool_depth, name):
    """Mixed_5b/5c/5d: the 35x35 module (5x5 factorised as in the paper's
    figure 5 in slim's form: one 5x5 branch and one double 3x3 branch)."""
    b0 = b.conv(x, 64, 1, name=name + "/b0_1x1")
    b1 = b.conv(x, 48, 1, name=name + "/b1_1x1")
    b1 = b.conv(b1, 64, 5, name=name + "/b1_5x5")
    b2 = b.conv(x, 64, 1, name=name + "/b2_1x1")
    b2 = b.conv(b2, 96, 3, name=name + "/b2_3x3a")
    b2 = b.conv(b2, 96, 3, name=name + "/b2_3x3b")
    b3 = _avg_pool_same(x, name + "/b3_pool")
    b3 = b.conv(b3, pool_depth, 1, name=name + "/b3_1x1")
    return layers.Concatenate(name=name)([b0, b1, b2, b3])


def _reduce_35_to_17(b, x, name):
    """Mixed_6a: grid reduction 35 -> 17 (paper figure 10)."""
    b0 = b.conv(x, 384, 3, strides=2, padding="valid", name=name + "/b0_3x3")
    b1 = b.conv(x, 64, 1, name=name + "/b1_1x1")
    b1 = b.conv(b1, 96, 3, name=name + "/b1_3x3a")
    b1 = b.conv(b1, 96, 3, strides=2, padding="valid", name=name + "/b1_3x3b")
    b2 = layers.MaxPooling2D(3, strides=2, padding="valid",
                             name=name + "/b2_pool")(x)
    return layers.Concatenate(name=name)([b0, b1, b2])


def _mixed_17(b, x, mid, name):
    """Mixed_6b..6e: the 17x17 module with 7x7 factorised into 1x7 + 7x1
    (paper figure 6); `mid` is 128, 160, 160, 192."""
    b0 = b.conv(x, 192, 1, name=name + "/b0_1x1")
    b1 = b.conv(x, mid, 1, name=name + "/b1_1x1")
    b1 = b.conv(b1, mid, (1, 7), name=name + "/b1_1x7")
    b1 = b.conv(b1, 192, (7, 1), name=name + "/b1_7x1")
    b2 = b.conv(x, mid, 1, name=name + "/b2_1x1")
    b2 = b.conv(b2, mid, (7, 1), name=name + "/b2_7x1a")
    b2 = b.conv(b2, mid, (1, 7), name=name + "/b2_1x7a")
    b2 = b.conv(b2, mid, (7, 1), name=name + "/b2_7x1b")
    b2 = b.conv(b2, 192, (1, 7), name=name + "/b2_1x7b")
    b3 = _avg_pool_same(x, name + "/b3_pool")
    b3 = b.conv(b3, 192, 1, name=name + "/b3_1x1")
    return layers.Concatenate(name=name)([b0, b1, b2, b3])


def _reduce_17_to_8(b, x, name):
    """Mixed_7a: grid reduction 17 -> 8."""
    b0 = b.conv(x, 192, 1, name=name + "/b0_1x1")
    b0 = b.conv(b0, 320, 3, strides=2, padding="valid", name=name + "/b0_3x3")
    b1 = b.conv(x, 192, 1, name=name + "/b1_1x1")
    b1 = b.conv(b1, 192, (1, 7), name=name + "/b1_1x7")
    b1 = b.conv(b1, 192, (7, 1), name=name + "/b1_7x1")
    b1 = b.conv(b1, 192, 3, strides=2, padding="valid", name=name + "/b1_3x3")
    b2 = layers.MaxPooling2D(3, strides=2, padding="valid",
                             name=name + "/b2_pool")(x)
    return layers.Concatenate(name=name)([b0, b1, b2])


def _mixed_8(b, x, name):
    """Mixed_7b/7c: the 8x8 module with expanded filter banks (figure 7)."""
    b0 = b.conv(x, 320, 1, name=name + "/b0_1x1")
    b1 = b.conv(x, 384, 1, name=name + "/b1_1x1")
    b1 = layers.Concatenate(name=name + "/b1")([
        b.conv(b1, 384, (1, 3), name=name + "/b1_1x3"),
        b.conv(b1, 384, (3, 1), name=name + "/b1_3x1")])
    b2 = b.conv(x, 448, 1, name=name + "/b2_1x1")
    b2 = b.conv(b2, 384, 3, name=name + "/b2_3x3")
    b2 = layers.Concatenate(name=name + "/b2")([
        b.conv(b2, 384, (1, 3), name=name + "/b2_1x3"),
        b.conv(b2, 384, (3, 1), name=name + "/b2_3x1")])
    b3 = _avg_pool_same(x, name + "/b3_pool")
    b3 = b.conv(b3, 192, 1, name=name + "/b3_1x1")
    return layers.Concatenate(name=name)([b0, b1, b2, b3])


def _aux_head(b, x, num_classes):
    """The auxiliary classifier on the 17x17 grid (Mixed_6e): 5x5/3 average
    pool, 1x1x128 conv, 5x5x768 conv, logits. Kernels shrink on small maps."""
    x = layers.AveragePooling2D(_fit_kernel(x, (5, 5)), strides=3,
                                padding="valid", name="aux/pool")(x)
    x = b.conv(x, 128, 1, name="aux/1x1")
    x = b.conv(x, 768, _fit_kernel(x, (5, 5)), padding="valid",
               name="aux/5x5", stddev=0.01)
    if x.shape[1] > 1 or x.shape[2] > 1:  # inputs larger than 299
        x = layers.GlobalAveragePooling2D(keepdims=True, name="aux/gap")(x)
    return b.logits(x, num_classes, "aux_logits", stddev=0.001)


def build(num_classes=1000, input_shape=DEFAULT_INPUT_SHAPE, aux_logits=True,
          depth_multiplier=1.0, min_depth=16, dropout=0.2,
          weight_decay=WEIGHT_DECAY, bn_momentum=BATCH_NORM_MOMENTUM,
          name="inception_v3"):
    """Inception-v3 taking `input_shape` images scaled to [-1, 1]."""
    if min(input_shape[0], input_shape[1]) < MIN_INPUT_SIZE:
        raise ValueError("Inception-v3 needs inputs of at least %dx%d, got %r"
                         % (MIN_INPUT_SIZE, MIN_INPUT_SIZE, input_shape))
    b = _Builder(depth_multiplier, min_depth, weight_decay, bn_momentum)
    inputs = tf.keras.Input(shape=input_shape, name="image")
    # Stem: 299 -> 35x35x192.
    x = b.conv(inputs, 32, 3, strides=2, padding="valid", name="Conv2d_1a_3x3")
    x = b.conv(x, 32, 3, padding="valid", name="Conv2d_2a_3x3")
    x = b.conv(x, 64, 3, name="Conv2d_2b_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_3a_3x3")(x)
    x = b.conv(x, 80, 1, padding="valid", name="Conv2d_3b_1x1")
    x = b.conv(x, 192, 3, padding="valid", name="Conv2d_4a_3x3")
    x = layers.MaxPooling2D(3, strides=2, name="MaxPool_5a_3x3")(x)
    # 35x35 grid.
    x = _mixed_35(b, x, 32, "Mixed_5b")
    x = _mixed_35(b, x, 64, "Mixed_5c")
    x = _mixed_35(b, x, 64, "Mixed_5d")
    # 17x17 grid.
    x = _reduce_35_to_17(b, x, "Mixed_6a")
    x = _mixed_17(b, x, 128, "Mixed_6b")
    x = _mixed_17(b, x, 160, "Mixed_6c")
    x = _mixed_17(b, x, 160, "Mixed_6d")
    x = _mixed_17(b, x, 192, "Mixed_6e")
    aux = _aux_head(b, x, num_classes) if aux_logits else None
    # 8x8 grid.
    x = _reduce_17_to_8(b, x, "Mixed_7a")
    x = _mixed_8(b, x, "Mixed_7b")
    x = _mixed_8(b, x, "Mixed_7c")
    # Head: global average pool (the 8x8 pool at 299; keeps 1x1 spatial
    # dims for the 1x1-conv logits, as slim does), dropout, logits.
    x = layers.GlobalAveragePooling2D(keepdims=True, name="AvgPool_1a")(x)
    x = layers.Dropout(dropout, name="Dropout_1b")(x)
    logits = b.logits(x, num_classes, "logits", stddev=0.001)
    outputs = [logits, aux] if aux_logits else logits
    return tf.keras.Model(inputs, outputs, name=name)
