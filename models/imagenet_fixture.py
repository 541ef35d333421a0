"""A tiny ImageNet on disk, in the real formats, for tests and smoke runs.

- `write_tfrecords(dir)`: shards as tensorflow/models inception's
  `build_imagenet_data.py` writes them (same feature keys, 1-based labels,
  synset and text fields, bounding boxes in [0, 1]).
- `write_ilsvrc_tars(manual_dir)`: ILSVRC2012_img_train.tar (one inner tar
  per synset) and ILSVRC2012_img_val.tar, the manual download TFDS'
  `imagenet2012` builder prepares from (`imagenet.prepare_tfds`).

Images are real JPEGs (TensorFlow's encoder) of random size, a gradient whose
colour depends on the class plus noise, so crops, colour ops and the parser
all see real data.
"""
import io
import os
import tarfile

import ps_sync.keras_env  # noqa: F401

import numpy as np
import tensorflow as tf


def synsets():
    """The 1000 ILSVRC 2012 synsets in label order (shipped with TFDS)."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common
    with tf.io.gfile.GFile(os.fspath(imagenet_common.label_names_file())) as f:
        return [line.strip() for line in f if line.strip()]


def _image(rng, label, min_size, max_size):
    """uint8 [h, w, 3] of random size whose colour encodes `label`."""
    h, w = rng.integers(min_size, max_size + 1, size=2)
    colour = np.array([label * 37 % 256, label * 91 % 256, label * 151 % 256],
                      np.float32)
    ramp = np.linspace(0.3, 1.0, w, dtype=np.float32)[None, :, None]
    image = colour * ramp + rng.normal(0, 12, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image):
    return tf.io.encode_jpeg(tf.constant(image), quality=90).numpy()


def _box(rng):
    """[ymin, xmin, ymax, xmax] in [0, 1] covering 20%..90% of each side."""
    size = rng.uniform(0.2, 0.9, size=2)
    start = rng.uniform(0, 1 - size)
    return [start[0], start[1], start[0] + size[0], start[1] + size[1]]


def _example(image, jpeg, label, synset, boxes, filename):
    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))

    def strings(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": ints([image.shape[0]]),
        "image/width": ints([image.shape[1]]),
        "image/colorspace": strings([b"RGB"]),
        "image/channels": ints([3]),
        "image/class/label": ints([label]),
        "image/class/synset": strings([synset.encode()]),
        "image/class/text": strings([synset.encode()]),
        "image/object/bbox/ymin": floats(boxes[:, 0].tolist()),
        "image/object/bbox/xmin": floats(boxes[:, 1].tolist()),
        "image/object/bbox/ymax": floats(boxes[:, 2].tolist()),
        "image/object/bbox/xmax": floats(boxes[:, 3].tolist()),
        "image/object/bbox/label": ints([label] * len(boxes)),
        "image/format": strings([b"JPEG"]),
        "image/filename": strings([filename.encode()]),
        "image/encoded": strings([jpeg]),
    }))


def write_tfrecords(data_dir, num_train=24, num_validation=8, train_shards=3,
                    validation_shards=2, num_classes=4, min_size=48,
                    max_size=96, seed=0):
    """Write `train-0000i-of-0000n` and `validation-...` shards.

    Labels are 1-based (1..num_classes) as in inception; example i gets
    label i % num_classes + 1 and 0..2 boxes (0 boxes tests the
    whole-image fallback). Returns {split: [(label, height, width, boxes)]}
    in file order, for tests to compare against.
    """
    rng = np.random.default_rng(seed)
    names = synsets()
    tf.io.gfile.makedirs(data_dir)
    written = {}
    for split, count, shards in (("train", num_train, train_shards),
                                 ("validation", num_validation,
                                  validation_shards)):
        written[split] = []
        writers = [tf.io.TFRecordWriter(os.path.join(
            data_dir, "%s-%05d-of-%05d" % (split, s, shards)))
            for s in range(shards)]
        # Contiguous runs per shard, as build_imagenet_data.py does.
        bounds = np.linspace(0, count, shards + 1).astype(int)
        for s, writer in enumerate(writers):
            for i in range(bounds[s], bounds[s + 1]):
                label = i % num_classes + 1
                image = _image(rng, label, min_size, max_size)
                boxes = [_box(rng) for _ in range(i % 3)]
                filename = "%s_%d.JPEG" % (names[label - 1], i)
                writer.write(_example(image, _jpeg(image), label,
                                      names[label - 1], boxes,
                                      filename).SerializeToString())
                written[split].append((label, image.shape[0], image.shape[1],
                                       boxes))
            writer.close()
    return written


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_ilsvrc_tars(manual_dir, num_train=12, num_validation=6,
                      num_classes=3, min_size=48, max_size=96, seed=0):
    """Write ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar as
    image-net.org ships them. Training images use the first `num_classes`
    synsets; validation labels are whatever TFDS' shipped
    validation_labels.txt says for ILSVRC2012_val_00000001.. .
    Returns {"train": [labels], "validation": [labels]} (0-based, TFDS
    order of each tar's members)."""
    import tensorflow_datasets as tfds
    rng = np.random.default_rng(seed)
    names = synsets()
    tf.io.gfile.makedirs(manual_dir)
    train_labels = []
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"),
                      "w") as outer:
        for label in range(num_classes):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(label, num_train, num_classes):
                    jpeg = _jpeg(_image(rng, label + 1, min_size, max_size))
                    _add_bytes(inner, "%s_%d.JPEG" % (names[label], i), jpeg)
                    train_labels.append(label)
            _add_bytes(outer, names[label] + ".tar", inner_bytes.getvalue())
    # TFDS maps the sorted member names to the lines of this file.
    labels_file = tfds.core.tfds_path(
        "datasets/imagenet2012/validation_labels.txt")
    with tf.io.gfile.GFile(os.fspath(labels_file)) as f:
        val_synsets = f.read().strip().splitlines()[:num_validation]
    val_labels = [names.index(s) for s in val_synsets]
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"),
                      "w") as tar:
        for i, label in enumerate(val_labels):
            jpeg = _jpeg(_image(rng, label + 1, min_size, max_size))
            _add_bytes(tar, "ILSVRC2012_val_%08d.JPEG" % (i + 1), jpeg)
    return {"train": train_labels, "validation": val_labels}
