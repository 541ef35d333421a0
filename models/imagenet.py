"""ImageNet (ILSVRC 2012) input: the classic TFRecord shards or TFDS.

Two on-disk sources, one stream of examples {image (JPEG bytes), label, bbox}:

- "tfrecord": the shards of tensorflow/models' `build_imagenet_data.py`
  (`<data_dir>/train-00000-of-01024`, `validation-00000-of-00128`, features
  `image/encoded`, `image/class/label` 1..1000, `image/object/bbox/*`).
- "tfds": TFDS `imagenet2012`, prepared under `<data_dir>` from a manual
  download (`prepare_tfds`); it has no boxes, so the crop uses the whole image.

Labels come out 0-based (0..999) from both: inception's 1-based label k is
the k-th synset in sorted order, the same class as TFDS label k - 1.

    ds = imagenet.train_dataset("tfrecord", data_dir, batch_size=32,
                                image_size=299, seed=0, worker_index=3)
    fn = imagenet.per_worker_dataset_fn("tfds", data_dir, 32, 299, seed=0)
"""
import os

import ps_sync.keras_env  # noqa: F401

import tensorflow as tf

from models import inception_preprocessing, worker_input

NUM_CLASSES = 1000
SOURCES = ("tfrecord", "tfds")
SPLITS = ("train", "validation")
TFDS_NAME = "imagenet2012"
SHUFFLE_BUFFER = 10000  # examples; inception's shuffle queue held 1024 * 16
_TFRECORD_PATTERN = "%s-?????-of-?????"


def _check(source, split):
    if source not in SOURCES:
        raise ValueError("unknown ImageNet source %r; expected one of %s"
                         % (source, ", ".join(SOURCES)))
    if split not in SPLITS:
        raise ValueError("unknown ImageNet split %r; expected one of %s"
                         % (split, ", ".join(SPLITS)))


# --- classic TFRecord shards ------------------------------------------------

def tfrecord_files(data_dir, split):
    """The sorted shard paths of `split`; ValueError naming what was
    expected if there are none."""
    _check("tfrecord", split)
    pattern = os.path.join(data_dir, _TFRECORD_PATTERN % split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(
            "no ImageNet TFRecord shards for split %r in data dir %r: "
            "expected files matching %r (the layout of tensorflow/models "
            "inception's build_imagenet_data.py, e.g. %s-00000-of-01024)"
            % (split, data_dir, pattern, split))
    return files


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized):
    """One serialized tf.train.Example -> {image, label, bbox}.

    label is int32 0..999 (the shard's 1-based label minus 1); bbox is
    float32 [1, num_boxes, 4] as [ymin, xmin, ymax, xmax], the layout
    `sample_distorted_bounding_box` takes.
    """
    f = tf.io.parse_single_example(serialized, _FEATURES)
    coords = [tf.sparse.to_dense(f["image/object/bbox/" + k])
              for k in ("ymin", "xmin", "ymax", "xmax")]
    return {
        "image": f["image/encoded"],
        "label": tf.cast(f["image/class/label"] - 1, tf.int32),
        "bbox": tf.expand_dims(tf.stack(coords, axis=1), 0),
    }


def _tfrecord_examples(data_dir, split, shuffle_seed=None):
    """Examples of all shards; with a seed, shard order and interleaving
    are shuffled anew each epoch (pass the worker's seed)."""
    paths = tfrecord_files(data_dir, split)
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_seed is not None:
        # Repeat after the interleave, not before: each epoch then holds
        # every record exactly once, in a shard order drawn anew.
        files = files.shuffle(len(paths), seed=shuffle_seed,
                              reshuffle_each_iteration=True)
        records = files.interleave(
            tf.data.TFRecordDataset, cycle_length=4, block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).repeat()
    else:
        records = files.flat_map(tf.data.TFRecordDataset)
    return records.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)


# --- TFDS imagenet2012 -----------------------------------------------------

def _ensure_importlib_resources():
    """TFDS 4.9 imports the `importlib_resources` backport when it prepares
    a dataset but declares it only for Python < 3.9 (tensorflow/datasets
    #11212); the standard library's `importlib.resources` has what it uses
    (`abc.Traversable`). No-op when the backport is installed."""
    import sys
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import importlib.resources.abc  # noqa: F401
        sys.modules.setdefault("importlib_resources", importlib.resources)


def _tfds_builder(data_dir):
    _ensure_importlib_resources()
    import tensorflow_datasets as tfds
    return tfds.builder(TFDS_NAME, data_dir=data_dir)


def prepare_tfds(data_dir, manual_dir=None):
    """Build TFDS imagenet2012 under `data_dir` from the ILSVRC tars in
    `manual_dir` (default `<data_dir>/downloads/manual`). Slow on real
    ImageNet (hours): run it once, by hand, never from a training job."""
    import tensorflow_datasets as tfds
    manual_dir = manual_dir or os.path.join(data_dir, "downloads", "manual")
    if not tf.io.gfile.glob(os.path.join(manual_dir, "ILSVRC2012_img_*.tar")):
        raise ValueError(
            "no ImageNet archives in manual dir %r: expected "
            "ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar "
            "(from image-net.org)" % manual_dir)
    builder = _tfds_builder(data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def _prepared_builder(data_dir, split):
    """The TFDS builder of a prepared imagenet2012 that has `split`."""
    builder = _tfds_builder(data_dir)
    info_file = os.path.join(builder.data_dir, "dataset_info.json")
    if not tf.io.gfile.exists(info_file):
        raise ValueError(
            "TFDS %r is not prepared in data dir %r: expected %r. Put "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
            "<data_dir>/downloads/manual and run "
            "models.imagenet.prepare_tfds(data_dir) once."
            % (TFDS_NAME, data_dir, info_file))
    if split not in builder.info.splits:
        raise ValueError("TFDS %r in data dir %r has no split %r (it has %s)"
                         % (TFDS_NAME, data_dir, split,
                            ", ".join(sorted(builder.info.splits))))
    return builder


def tfds_num_examples(data_dir, split):
    return _prepared_builder(data_dir, split).info.splits[split].num_examples


def _tfds_examples(data_dir, split, shuffle_seed=None):
    import tensorflow_datasets as tfds
    builder = _prepared_builder(data_dir, split)
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed, interleave_cycle_length=4,
        shuffle_reshuffle_each_iteration=True)
    ds = builder.as_dataset(
        split=split, shuffle_files=shuffle_seed is not None,
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()})  # keep JPEG bytes
    if shuffle_seed is not None:
        ds = ds.repeat()
    whole_image = tf.constant(
        [inception_preprocessing.WHOLE_IMAGE_BOX], tf.float32)
    return ds.map(lambda ex: {"image": ex["image"],
                              "label": tf.cast(ex["label"], tf.int32),
                              "bbox": whole_image})


# --- datasets ---------------------------------------------------------------

def examples(source, data_dir, split, shuffle_seed=None):
    """Raw {image, label, bbox} examples; endless and file-shuffled when
    `shuffle_seed` is given, one ordered pass otherwise."""
    _check(source, split)
    if not tf.io.gfile.isdir(data_dir):
        raise ValueError("ImageNet data dir %r does not exist (source %r "
                         "expects %s)" % (data_dir, source,
                                          "TFRecord shards" if source ==
                                          "tfrecord" else "a TFDS directory"))
    if source == "tfrecord":
        return _tfrecord_examples(data_dir, split, shuffle_seed)
    return _tfds_examples(data_dir, split, shuffle_seed)


def train_examples(source, data_dir, seed=0, worker_index=0,
                   shuffle_buffer=SHUFFLE_BUFFER):
    """One worker's endless stream of raw {image, label, bbox} training
    examples: shards in a fresh order each epoch, then a shuffle buffer,
    both seeded by (seed, worker_index)."""
    shuffle_seed = worker_input.op_seed(seed, worker_index)
    ds = examples(source, data_dir, "train", shuffle_seed)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed,
                        reshuffle_each_iteration=True)
    return ds


def train_dataset(source, data_dir, batch_size, image_size=299, seed=0,
                  worker_index=0, shuffle_buffer=SHUFFLE_BUFFER):
    """One worker's endless training stream: the whole training split in an
    order (and with distortions) of its own, fixed by (seed, worker_index);
    batches of (float32 [b, s, s, 3] in [-1, 1], int32 [b] labels)."""
    shuffle_seed = worker_input.op_seed(seed, worker_index)
    ds = train_examples(source, data_dir, seed, worker_index, shuffle_buffer)
    # One stateless seed per example for its crop, flip and colours.
    per_example_seeds = tf.data.Dataset.random(seed=shuffle_seed).batch(2)
    ds = tf.data.Dataset.zip((ds, per_example_seeds))

    def preprocess(example, example_seed):
        image = inception_preprocessing.preprocess_for_train(
            example["image"], example["bbox"], image_size, example_seed)
        return image, example["label"]

    return (ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def eval_dataset(source, data_dir, batch_size, image_size=299,
                 split="validation"):
    """One ordered pass over `split`, central-cropped; last batch kept."""
    ds = examples(source, data_dir, split)

    def preprocess(example):
        image = inception_preprocessing.preprocess_for_eval(
            example["image"], image_size)
        return image, example["label"]

    return (ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def per_worker_dataset_fn(source, data_dir, batch_size, image_size=299,
                          seed=0, worker_index=None,
                          shuffle_buffer=SHUFFLE_BUFFER):
    """A `dataset_fn(input_context)` for `DatasetCreator` or
    `ClusterCoordinator.create_per_worker_dataset`. Checks the data dir
    now, on the caller, so a wrong path fails before any worker starts."""
    _check(source, "train")
    examples(source, data_dir, "train")  # raises ValueError if absent

    def dataset_fn(input_context=None):
        index = worker_input.resolve_worker_index(input_context, worker_index)
        return train_dataset(source, data_dir, batch_size, image_size, seed,
                             index, shuffle_buffer)

    return dataset_fn
