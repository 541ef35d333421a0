"""Datasets by name: the interface the training program uses."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from models import datasets, digits, imagenet_fixture


def test_names_and_unknown_dataset():
    assert datasets.names() == ["digits", "imagenet2012", "imagenet_tfrecord"]
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
        datasets.per_worker_dataset_fn("mnist", 32)
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        datasets.eval_dataset("cifar10", 32)


def test_digits_by_name():
    spec = datasets.get_spec("digits")
    assert spec.num_classes == 10
    assert datasets.input_shape("digits") == (8, 8, 1)
    assert datasets.num_train_examples("digits") == 1437
    fn = datasets.per_worker_dataset_fn("digits", 479, seed=4)
    context = tf.distribute.InputContext(num_input_pipelines=3,
                                         input_pipeline_id=2)
    got = next(iter(fn(context)))[0].numpy()
    expected = next(iter(digits.train_dataset(479, 4, worker_index=2)))[0]
    np.testing.assert_array_equal(got, expected.numpy())
    labels = np.concatenate([y for _, y in datasets.eval_dataset(
        "digits", 200).as_numpy_iterator()])
    np.testing.assert_array_equal(labels, digits.load().y_test)


def test_imagenet_tfrecord_by_name(tmp_path):
    imagenet_fixture.write_tfrecords(str(tmp_path), num_train=8,
                                     num_validation=4, train_shards=2,
                                     validation_shards=1)
    assert datasets.get_spec("imagenet_tfrecord").num_classes == 1000
    assert datasets.input_shape("imagenet_tfrecord", 75) == (75, 75, 3)
    fn = datasets.per_worker_dataset_fn("imagenet_tfrecord", 2, seed=0,
                                        data_dir=str(tmp_path), image_size=75)
    images, labels = next(iter(fn(None)))
    assert images.shape == (2, 75, 75, 3) and labels.shape == (2,)
    batches = list(datasets.eval_dataset(
        "imagenet_tfrecord", 3, data_dir=str(tmp_path),
        image_size=75).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [3, 1]
    assert datasets.num_train_examples("imagenet_tfrecord") == 1281167


def test_imagenet_needs_an_existing_data_dir(tmp_path):
    with pytest.raises(ValueError, match="'imagenet2012' needs a data dir"):
        datasets.per_worker_dataset_fn("imagenet2012", 32)
    with pytest.raises(ValueError, match="not prepared in data dir"):
        datasets.num_train_examples("imagenet2012", str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        datasets.eval_dataset("imagenet_tfrecord", 32,
                              data_dir=str(tmp_path / "missing"))
