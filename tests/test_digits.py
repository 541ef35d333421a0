"""scikit-learn digits: the fixed split and the per-worker training order."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import tensorflow as tf

from models import digits


def _rows(x):
    """Each image as a hashable row, to compare sets and orders."""
    return [tuple(r) for r in np.asarray(x).reshape(len(x), -1)]


def test_split_is_fixed_stratified_and_normalised():
    data = digits.load()
    assert data.x_train.shape == (1437, 8, 8, 1)
    assert data.x_test.shape == (360, 8, 8, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    # Stratified: every class has 35 or 36 test examples.
    assert set(np.bincount(data.y_test)) <= {35, 36, 37}
    # The split is a function of the seed only (fresh load, same arrays).
    digits._cache.clear()
    again = digits.load()
    np.testing.assert_array_equal(data.x_test, again.x_test)
    np.testing.assert_array_equal(data.y_train, again.y_train)
    other = digits.load(split_seed=1)
    assert not np.array_equal(other.y_test, data.y_test)
    # Train and test are disjoint images... up to the few exact duplicates
    # the digits set has; no more than a handful.
    overlap = set(_rows(data.x_train)) & set(_rows(data.x_test))
    assert len(overlap) <= 5


def _one_epoch(seed, worker_index, epoch=0):
    """Batches of 479 = 1437 / 3: three batches are exactly one epoch."""
    ds = digits.train_dataset(479, seed=seed, worker_index=worker_index)
    batches = list(ds.skip(3 * epoch).take(3).as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    return x, y


def test_each_worker_reads_the_whole_set_in_its_own_order():
    data = digits.load()
    full = sorted(_rows(data.x_train))
    x0, y0 = _one_epoch(seed=7, worker_index=0)
    x1, y1 = _one_epoch(seed=7, worker_index=1)
    # Both see every training example exactly once per epoch...
    assert sorted(_rows(x0)) == full
    assert sorted(_rows(x1)) == full
    assert sorted(y0.tolist()) == sorted(data.y_train.tolist())
    # ... in different orders (agreeing on < 1% of positions, ~chance).
    same = sum(a == b for a, b in zip(_rows(x0), _rows(x1)))
    assert same < 15, same
    # Labels stay attached to their images.
    lookup = dict(zip(_rows(data.x_train), data.y_train.tolist()))
    assert [lookup[r] for r in _rows(x1)] == y1.tolist()


def test_order_is_reproducible_and_reshuffled_each_epoch():
    x_a, _ = _one_epoch(seed=7, worker_index=1)
    x_b, _ = _one_epoch(seed=7, worker_index=1)
    np.testing.assert_array_equal(x_a, x_b)
    x_next, _ = _one_epoch(seed=7, worker_index=1, epoch=1)
    assert sorted(_rows(x_next)) == sorted(_rows(x_a))
    assert not np.array_equal(x_next, x_a)
    x_seed, _ = _one_epoch(seed=8, worker_index=1)
    assert not np.array_equal(x_seed, x_a)


def test_batches_are_fixed_size_and_endless():
    ds = digits.train_dataset(32, seed=0, worker_index=0)
    assert ds.element_spec[0].shape == (32, 8, 8, 1)
    assert ds.element_spec[1].shape == (32,)
    # 100 batches > two epochs of 1437 examples: the stream does not end.
    assert len(list(ds.take(100).as_numpy_iterator())) == 100


def test_per_worker_dataset_fn_without_a_cluster_uses_pipeline_id():
    fn = digits.per_worker_dataset_fn(479, seed=3)
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=1)
    got = next(iter(fn(context)))[0].numpy()
    expected = next(iter(digits.train_dataset(479, 3, worker_index=1)))[0]
    np.testing.assert_array_equal(got, expected.numpy())


def test_eval_dataset_is_the_test_set_in_order():
    data = digits.load()
    batches = list(digits.eval_dataset(100).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [100, 100, 100, 60]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]),
                                  data.x_test)
