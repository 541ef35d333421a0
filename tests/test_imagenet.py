"""ImageNet input: the TFRecord parser and TFDS reader on generated data in
the real formats, per-worker orders, and clear errors for wrong inputs."""
import hashlib
import os

import ps_sync.keras_env  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from models import imagenet, imagenet_fixture

NUM_TRAIN, NUM_VALIDATION, NUM_CLASSES = 24, 8, 4


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("imagenet_tfrecord"))
    written = imagenet_fixture.write_tfrecords(
        data_dir, num_train=NUM_TRAIN, num_validation=NUM_VALIDATION,
        train_shards=4, validation_shards=2, num_classes=NUM_CLASSES)
    return data_dir, written


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("imagenet_tfds"))
    labels = imagenet_fixture.write_ilsvrc_tars(
        os.path.join(data_dir, "downloads", "manual"), num_train=12,
        num_validation=6, num_classes=3)
    imagenet.prepare_tfds(data_dir)
    return data_dir, labels


def _key(example):
    return hashlib.sha1(example["image"]).hexdigest()


def test_fixture_writes_classic_shard_names(tfrecord_dir):
    data_dir, _ = tfrecord_dir
    assert sorted(os.listdir(data_dir)) == [
        "train-00000-of-00004", "train-00001-of-00004",
        "train-00002-of-00004", "train-00003-of-00004",
        "validation-00000-of-00002", "validation-00001-of-00002"]
    raw = next(iter(tf.data.TFRecordDataset(
        os.path.join(data_dir, "train-00000-of-00004"))))
    example = tf.train.Example.FromString(raw.numpy())
    feature = example.features.feature
    assert feature["image/format"].bytes_list.value == [b"JPEG"]
    assert feature["image/class/synset"].bytes_list.value == [b"n01440764"]
    assert feature["image/class/label"].int64_list.value == [1]
    assert feature["image/encoded"].bytes_list.value[0][:2] == b"\xff\xd8"


def test_parser_reads_labels_boxes_and_jpegs(tfrecord_dir):
    data_dir, written = tfrecord_dir
    parsed = list(imagenet.examples("tfrecord", data_dir, "train")
                  .as_numpy_iterator())
    assert len(parsed) == NUM_TRAIN
    for example, (label, height, width, boxes) in zip(parsed,
                                                      written["train"]):
        # 1-based inception labels come out 0-based.
        assert example["label"] == label - 1
        assert example["bbox"].shape == (1, len(boxes), 4)
        np.testing.assert_allclose(example["bbox"][0],
                                   np.reshape(boxes, (-1, 4)), atol=1e-6)
        image = tf.io.decode_jpeg(example["image"]).numpy()
        assert image.shape == (height, width, 3)
    assert sorted({int(e["label"]) for e in parsed}) == [0, 1, 2, 3]


def test_train_dataset_shapes_ranges_and_labels(tfrecord_dir):
    data_dir, _ = tfrecord_dir
    ds = imagenet.train_dataset("tfrecord", data_dir, batch_size=6,
                                image_size=75, seed=0, worker_index=0)
    assert ds.element_spec[0].shape == (6, 75, 75, 3)
    batches = list(ds.take(8).as_numpy_iterator())  # two epochs
    images = np.stack([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.5 and images.max() > 0.0  # not collapsed
    assert set(labels.tolist()) <= set(range(NUM_CLASSES))
    assert len(set(labels.tolist())) == NUM_CLASSES


def _first_epoch_keys(data_dir, worker_index, seed=0):
    stream = imagenet.train_examples("tfrecord", data_dir, seed=seed,
                                     worker_index=worker_index,
                                     shuffle_buffer=1)
    return [_key(e) for e in stream.take(NUM_TRAIN).as_numpy_iterator()]


def test_each_worker_reads_every_shard_in_its_own_order(tfrecord_dir):
    data_dir, _ = tfrecord_dir
    everything = sorted(_key(e) for e in imagenet.examples(
        "tfrecord", data_dir, "train").as_numpy_iterator())
    orders = [_first_epoch_keys(data_dir, w) for w in range(3)]
    for order in orders:
        assert sorted(order) == everything  # whole set, once per epoch
    assert len({tuple(o) for o in orders}) == 3  # three different orders
    assert _first_epoch_keys(data_dir, 1) == orders[1]  # reproducible


def test_shuffle_buffer_mixes_examples_per_worker(tfrecord_dir):
    data_dir, _ = tfrecord_dir

    def keys(worker):
        return [_key(e) for e in imagenet.train_examples(
            "tfrecord", data_dir, seed=0, worker_index=worker,
            shuffle_buffer=NUM_TRAIN).take(3 * NUM_TRAIN).as_numpy_iterator()]

    a, b = keys(0), keys(1)
    assert a != b
    # Over three epochs' worth, each worker sees every example.
    assert set(a) == set(b) and len(set(a)) == NUM_TRAIN


def test_eval_dataset_reads_validation_in_order(tfrecord_dir):
    data_dir, written = tfrecord_dir
    batches = list(imagenet.eval_dataset("tfrecord", data_dir, batch_size=5,
                                         image_size=75).as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(5, 75, 75, 3), (3, 75, 75, 3)]
    labels = np.concatenate([b[1] for b in batches]).tolist()
    assert labels == [label - 1 for label, *_ in written["validation"]]
    images = np.concatenate([b[0] for b in batches])
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_tfds_imagenet2012_prepared_from_manual_tars(tfds_dir):
    data_dir, labels = tfds_dir
    train = list(imagenet.examples("tfds", data_dir, "train")
                 .as_numpy_iterator())
    assert sorted(int(e["label"]) for e in train) == sorted(labels["train"])
    validation = list(imagenet.examples("tfds", data_dir, "validation")
                      .as_numpy_iterator())
    assert sorted(int(e["label"]) for e in validation) == sorted(
        labels["validation"])
    # TFDS has no boxes: the whole image is the box.
    np.testing.assert_array_equal(train[0]["bbox"], [[[0, 0, 1, 1]]])
    assert train[0]["image"][:2] == b"\xff\xd8"  # JPEG bytes, undecoded

    ds = imagenet.train_dataset("tfds", data_dir, batch_size=4,
                                image_size=75, seed=0, worker_index=1)
    images, batch_labels = next(iter(ds))
    assert images.shape == (4, 75, 75, 3)
    assert -1.0 <= float(tf.reduce_min(images)) < float(
        tf.reduce_max(images)) <= 1.0
    assert set(batch_labels.numpy().tolist()) <= {0, 1, 2}
    evaluation = list(imagenet.eval_dataset("tfds", data_dir, 4, 75)
                      .as_numpy_iterator())
    assert sum(len(b[1]) for b in evaluation) == 6

    # TFDS wrote one shard here, so the orders differ by the shuffle buffer.
    def worker_keys(worker):
        stream = imagenet.train_examples("tfds", data_dir, seed=0,
                                         worker_index=worker,
                                         shuffle_buffer=12)
        return [_key(e) for e in stream.take(36).as_numpy_iterator()]

    a, b = worker_keys(0), worker_keys(1)
    assert set(a) == set(b) and len(set(a)) == 12
    assert a[:12] != b[:12]


def test_wrong_data_dir_or_name_is_a_clear_error(tmp_path, tfrecord_dir):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data dir '%s' does not exist"
                       % missing):
        imagenet.examples("tfrecord", missing, "train")
    empty = str(tmp_path)
    with pytest.raises(ValueError,
                       match=r"no ImageNet TFRecord shards.*train-\?\?\?\?\?"):
        imagenet.train_dataset("tfrecord", empty, 4)
    with pytest.raises(ValueError, match="no ImageNet TFRecord shards"):
        imagenet.per_worker_dataset_fn("tfrecord", empty, 4)
    with pytest.raises(ValueError, match="not prepared in data dir '%s'.*"
                       "prepare_tfds" % empty):
        imagenet.eval_dataset("tfds", empty, 4)
    with pytest.raises(ValueError, match="no ImageNet archives.*"
                       "ILSVRC2012_img_train.tar"):
        imagenet.prepare_tfds(empty)
    data_dir, _ = tfrecord_dir
    with pytest.raises(ValueError, match="unknown ImageNet source 'imagenet'"
                       ".*tfrecord, tfds"):
        imagenet.train_dataset("imagenet", data_dir, 4)
    with pytest.raises(ValueError, match="unknown ImageNet split 'test'"):
        imagenet.eval_dataset("tfrecord", data_dir, 4, split="test")
