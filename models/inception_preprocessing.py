"""Inception preprocessing of JPEG bytes, after tensorflow/models'
inception `image_processing.py` and slim's `inception_preprocessing.py`.

Training: a random crop that covers at least 10% of a labelled bounding box
(aspect 3:4..4:3, 5%..100% of the image), resize, random left-right flip,
colour distortion (brightness, saturation, hue, contrast in one of two random
orders, clipped to [0, 1]). Evaluation: central crop of 87.5% and resize.
Both return float32 images of the requested size scaled to [-1, 1].

Every random choice is a stateless op keyed by a per-example seed, so a
worker's stream is a pure function of its seed: workers differ from each
other (stateful ops in a dataset_fn traced once under a global seed would
make every worker draw the same crops) and a run can be replayed.
"""
import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (0.75, 1.33)
AREA_RANGE = (0.05, 1.0)
MAX_ATTEMPTS = 100
EVAL_CENTRAL_FRACTION = 0.875
WHOLE_IMAGE_BOX = ((0.0, 0.0, 1.0, 1.0),)  # [ymin, xmin, ymax, xmax]


def _to_unit_range(image):
    """uint8 -> float32 in [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


def _to_model_range(image):
    """[0, 1] -> [-1, 1], the range Inception is trained on."""
    return (image - 0.5) * 2.0


def _resize(image, image_size):
    image = tf.image.resize(image, [image_size, image_size],
                            method=tf.image.ResizeMethod.BILINEAR)
    return tf.clip_by_value(image, 0.0, 1.0)


def distort_color(image, seed):
    """Colour distortion of a [0, 1] image, as inception's distort_color:
    brightness +-32/255, saturation x[0.5, 1.5], hue +-0.2, contrast
    x[0.5, 1.5], in one of two orders chosen at random; clipped to [0, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)

    def brightness(x):
        return tf.image.stateless_random_brightness(x, 32. / 255., seeds[0])

    def saturation(x):
        return tf.image.stateless_random_saturation(x, 0.5, 1.5, seeds[1])

    def hue(x):
        return tf.image.stateless_random_hue(x, 0.2, seeds[2])

    def contrast(x):
        return tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[3])

    def order_0():
        return contrast(hue(saturation(brightness(image))))

    def order_1():
        return hue(saturation(contrast(brightness(image))))

    first = tf.random.stateless_uniform([], seeds[4], maxval=2, dtype=tf.int32)
    image = tf.cond(tf.equal(first, 0), order_0, order_1)
    return tf.clip_by_value(image, 0.0, 1.0)


def sample_crop_window(image_shape, bbox, seed):
    """A random crop [offset_y, offset_x, height, width] (int32 [4]) that
    covers at least 10% of one of the boxes, with aspect 3:4..4:3 and
    5%..100% of the image area. No boxes: the whole image is the box."""
    bbox = tf.cond(tf.shape(bbox)[1] > 0, lambda: bbox,
                   lambda: tf.constant([WHOLE_IMAGE_BOX], tf.float32))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=bbox, seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE, area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], axis=0)


def preprocess_for_train(image_bytes, bbox, image_size, seed):
    """A distorted training image from JPEG bytes.

    Args:
      image_bytes: scalar string, a JPEG.
      bbox: float32 [1, num_boxes, 4] boxes [ymin, xmin, ymax, xmax] in
        [0, 1]; num_boxes may be 0 (then the whole image is the box).
      image_size: output height and width.
      seed: int32/int64 [2], the stateless seed of this example.
    Returns:
      float32 [image_size, image_size, 3] in [-1, 1].
    """
    crop_seed, flip_seed, color_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    window = sample_crop_window(tf.image.extract_jpeg_shape(image_bytes),
                                bbox, crop_seed)
    # Decode only the crop: most of a large JPEG is never looked at.
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = _resize(_to_unit_range(image), image_size)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = distort_color(image, color_seed)
    image.set_shape([image_size, image_size, 3])
    return _to_model_range(image)


def preprocess_for_eval(image_bytes, image_size,
                        central_fraction=EVAL_CENTRAL_FRACTION):
    """Central crop (87.5% of each side) and resize of JPEG bytes, in
    [-1, 1]."""
    image = _to_unit_range(tf.io.decode_jpeg(image_bytes, channels=3))
    image = tf.image.central_crop(image, central_fraction)
    image = _resize(image, image_size)
    image.set_shape([image_size, image_size, 3])
    return _to_model_range(image)
