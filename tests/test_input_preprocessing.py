"""Inception preprocessing: shapes, value ranges, the crop rules, and the
evaluation crop against a hand computation."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import tensorflow as tf

from models import inception_preprocessing as prep


def _jpeg(image):
    return tf.io.encode_jpeg(tf.constant(image, tf.uint8), quality=95)


def _framed_image(size=80, border=5):
    """Red inside, blue in a `border`-pixel frame: the central 87.5% of an
    80-pixel side is exactly the 70 red pixels."""
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 2] = 255
    image[border:size - border, border:size - border] = [255, 0, 0]
    return image


def test_eval_is_central_crop_0875_and_resize_in_minus1_1():
    image_bytes = _jpeg(_framed_image())
    out = prep.preprocess_for_eval(image_bytes, 75).numpy()
    assert out.shape == (75, 75, 3) and out.dtype == np.float32
    # Only the red centre survives: R ~ +1, G and B ~ -1 (JPEG noise aside,
    # and the outermost pixels that bilinear blends with the frame).
    inner = out[2:-2, 2:-2]
    assert inner[..., 0].min() > 0.8
    assert np.abs(inner[..., 1:] + 1).max() < 0.2
    # Same as doing it by hand.
    decoded = tf.io.decode_jpeg(image_bytes).numpy().astype(np.float32) / 255
    by_hand = tf.image.resize(decoded[5:75, 5:75], [75, 75]).numpy()
    np.testing.assert_allclose(out, (np.clip(by_hand, 0, 1) - 0.5) * 2,
                               atol=1e-5)


def test_train_output_shape_range_and_determinism():
    image_bytes = _jpeg(np.random.default_rng(0).integers(
        0, 256, (90, 120, 3)))
    box = tf.constant([[[0.1, 0.2, 0.8, 0.9]]], tf.float32)
    outs = [prep.preprocess_for_train(image_bytes, box, 64,
                                      tf.constant([s, 7], tf.int64)).numpy()
            for s in range(6)]
    for out in outs:
        assert out.shape == (64, 64, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
    assert min(o.min() for o in outs) < -0.9 and max(
        o.max() for o in outs) > 0.9
    # A seed fixes everything; different seeds give different images.
    again = prep.preprocess_for_train(image_bytes, box, 64,
                                      tf.constant([0, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(again, outs[0])
    assert len({o.tobytes() for o in outs}) == 6


def test_train_accepts_images_without_boxes():
    image_bytes = _jpeg(np.full((50, 70, 3), 128, np.uint8))
    no_box = tf.zeros([1, 0, 4], tf.float32)
    out = prep.preprocess_for_train(image_bytes, no_box, 32,
                                    tf.constant([1, 2], tf.int64))
    assert out.shape == (32, 32, 3)


def _overlap_fraction(window, box, height, width):
    y, x, h, w = window
    ymin, xmin, ymax, xmax = box[0] * height, box[1] * width, \
        box[2] * height, box[3] * width
    inter = (max(0.0, min(y + h, ymax) - max(y, ymin))
             * max(0.0, min(x + w, xmax) - max(x, xmin)))
    return inter / ((ymax - ymin) * (xmax - xmin))


def test_crop_window_follows_the_box_and_area_rules():
    height, width = 200, 300
    box = [0.0, 0.0, 0.25, 0.25]  # a small object in the top-left corner
    bbox = tf.constant([[box]], tf.float32)
    windows = [prep.sample_crop_window(
        tf.constant([height, width, 3]), bbox,
        tf.constant([s, 0], tf.int64)).numpy() for s in range(50)]
    areas = []
    for y, x, h, w in windows:
        assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
        # Covers >= 10% of the object (slim's min_object_covered).
        assert _overlap_fraction((y, x, h, w), box, height, width) >= 0.099
        areas.append(h * w / (height * width))
        if h * w < height * width:  # not the whole-image fallback
            assert 0.70 <= w / h <= 1.40  # aspect 3:4..4:3, integer rounding
    assert min(areas) >= 0.04 and max(areas) <= 1.0
    assert len({tuple(w) for w in windows}) > 40  # the crops vary
    # The object is in the corner, so crops crowd there.
    assert np.mean([y + h / 2 for y, _, h, _ in windows]) < height / 2


def test_distort_color_stays_in_unit_range_and_changes_colours():
    image = tf.random.stateless_uniform([16, 16, 3], [0, 1])
    outs = [prep.distort_color(image, tf.constant([s, 3], tf.int64)).numpy()
            for s in range(8)]
    for out in outs:
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.abs(out - image.numpy()).mean() > 0.01
    assert len({o.tobytes() for o in outs}) == 8
