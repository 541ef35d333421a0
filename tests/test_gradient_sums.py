"""ps_sync/gradient_sums.py: the layout of the sums and the means unpacked
from them, against numpy."""
import contextlib

import numpy as np

import ps_sync.keras_env  # noqa: F401
import tensorflow as tf

from ps_sync import gradient_sums
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _layout(variables, sparse):
    return gradient_sums.layout(
        variables, sparse,
        lambda value, name: tf.Variable(value, trainable=False, name=name),
        lambda var: contextlib.nullcontext())


def _model():
    return [tf.Variable(tf.zeros([2, 3]), name="kernel"),
            tf.Variable(tf.zeros([4]), name="bias"),
            tf.Variable(tf.zeros([5, 2]), name="embedding"),
            tf.Variable(tf.zeros([3], tf.float64), name="scale"),
            tf.Variable(tf.zeros([]), name="t")]


def test_dense_gradients_share_one_sum_per_dtype_sparse_ones_their_own():
    sums = _layout(_model(), [False, False, True, False, False])
    assert [(type(s).__name__, s.indices) for s in sums] == [
        ("FlatSum", [0, 1, 4]), ("OneSum", [2]), ("FlatSum", [3])]
    assert sums[0].variable.shape == [6 + 4 + 1]
    assert sums[0].variable.dtype == tf.float32
    assert sums[2].variable.dtype == tf.float64
    assert sums[1].variable.shape == [5, 2]


def _pushes(rng, count):
    """`count` pushes of gradients for `_model()`, the embedding's sparse
    (rows 1 and 3, row 3 twice in the last push)."""
    pushes = []
    for k in range(count):
        rows = [1, 3] if k < count - 1 else [3, 3]
        pushes.append([
            rng.normal(size=[2, 3]).astype(np.float32),
            rng.normal(size=[4]).astype(np.float32),
            (rng.normal(size=[2, 2]).astype(np.float32), rows),
            rng.normal(size=[3]),
            np.float32(rng.normal())])
    return pushes


def _as_grads(push):
    values, rows = push[2]
    return [tf.constant(push[0]), tf.constant(push[1]),
            tf.IndexedSlices(tf.constant(values), tf.constant(rows),
                             tf.constant([5, 2])),
            tf.constant(push[3]), tf.constant(push[4])]


def _expected_means(pushes):
    means = []
    for i in range(5):
        if i == 2:
            total = np.zeros([5, 2], np.float32)
            for p in pushes:
                np.add.at(total, p[2][1], p[2][0])
        else:
            total = sum(np.asarray(p[i]) for p in pushes)
        means.append(total / len(pushes))
    return means


def _sum_and_mean(sparse, pushes):
    sums = _layout(_model(), sparse)
    for push in pushes:
        grads = _as_grads(push)
        for s in sums:
            s.add(s.payload(grads))
    return sums, gradient_sums.means_in_order(sums, len(pushes), 5)


def test_means_unpacked_per_variable_equal_numpy():
    pushes = _pushes(np.random.default_rng(0), 3)
    sums, means = _sum_and_mean([False, False, True, False, False], pushes)
    for got, want in zip(means, _expected_means(pushes)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # The sparse sum moved only the rows it was given: rows 0, 2, 4 stay 0.
    np.testing.assert_array_equal(sums[1].variable.numpy()[[0, 2, 4]], 0)
    for s in sums:
        gradient_sums.clear(s)
        assert not np.any(s.variable.numpy())


def test_a_sparse_gradient_for_a_dense_sum_is_made_dense():
    """The layout said dense (e.g. a first trace with a dense gradient); a
    later IndexedSlices for that variable is summed all the same."""
    pushes = _pushes(np.random.default_rng(1), 2)
    sums, means = _sum_and_mean([False] * 5, pushes)
    assert [s.indices for s in sums] == [[0, 1, 2, 4], [3]]
    for got, want in zip(means, _expected_means(pushes)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def _two_devices():
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    variables = []
    for k, device in enumerate(["/cpu:0", "/cpu:1", "/cpu:0", "/cpu:1",
                                "/cpu:0"]):
        with tf.device(device):
            variables.append(tf.Variable(tf.fill([k + 1], float(k))))
    sums = gradient_sums.layout(
        variables, [False] * 5,
        lambda value, name: tf.Variable(value, trainable=False, name=name),
        lambda var: tf.device(var.device))
    grads = [tf.fill([k + 1], float(k)) for k in range(5)]
    for s in sums:
        s.add(s.payload(grads))
    means = gradient_sums.means_in_order(sums, 2, 5)
    return {"sums": [(s.indices, s.variable.device) for s in sums],
            "variables": [v.device for v in variables],
            "means": [m.numpy().tolist() for m in means]}


def test_one_sum_per_device_beside_its_variables():
    r = fresh_interpreter.run(HERE + ":_two_devices", timeout=120)
    cpu0, cpu1 = r["variables"][:2]
    assert cpu0 != cpu1
    assert r["sums"] == [[[0, 2, 4], cpu0], [[1, 3], cpu1]]
    assert r["means"] == [[k / 2] * (k + 1) for k in range(5)]
