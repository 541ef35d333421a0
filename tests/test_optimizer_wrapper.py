"""The wrapper as a Keras optimizer: identity without a cluster, both
families, config round trip, model.save, checkpoint keys, bad arguments."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from ps_sync import SyncReplicasWithBackups
from ps_sync import quorum
from ps_sync.testing import fresh_interpreter

FAMILIES = {
    "sgd": lambda: tf.keras.optimizers.SGD(0.1),
    "momentum": lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9),
    "rmsprop": lambda: tf.keras.optimizers.RMSprop(0.01, rho=0.9,
                                                   momentum=0.9, epsilon=1.0),
    "adam": lambda: tf.keras.optimizers.Adam(0.01),
    "legacy_sgd": lambda: tf.keras.optimizers.legacy.SGD(0.1),
    "legacy_momentum": lambda: tf.keras.optimizers.legacy.SGD(0.1,
                                                              momentum=0.9),
    "legacy_rmsprop": lambda: tf.keras.optimizers.legacy.RMSprop(
        0.01, rho=0.9, momentum=0.9, epsilon=1.0),
    "legacy_adam": lambda: tf.keras.optimizers.legacy.Adam(0.01),
}


def _train(optimizer):
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"),
                                 tf.keras.layers.Dense(1)])
    model.compile(optimizer, "mse")
    rng = np.random.RandomState(0)
    x, y = rng.randn(64, 3), rng.randn(64, 1)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_without_a_cluster_it_is_exactly_the_wrapped_optimizer(name):
    plain = _train(FAMILIES[name]())
    wrapped_opt = SyncReplicasWithBackups(FAMILIES[name](), 2, 3)
    assert isinstance(wrapped_opt, SyncReplicasWithBackups)
    wrapped = _train(wrapped_opt)
    for a, b in zip(plain.get_weights(), wrapped.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(wrapped_opt.iterations.numpy()) == 8  # 2 epochs x 4 batches
    assert wrapped_opt.protocol is None  # no cluster, no protocol


@pytest.mark.parametrize("name", ["adam", "legacy_rmsprop"])
def test_config_round_trip(name):
    opt = SyncReplicasWithBackups(
        FAMILIES[name](), 4, 5,
        quorum_policy=quorum.TimeoutThenDegrade(3, 2.5), max_wait_s=30,
        ask_before_send_min_bytes=4096)
    config = tf.keras.optimizers.serialize(opt)
    again = tf.keras.optimizers.deserialize(
        config, use_legacy_optimizer=name.startswith("legacy"))
    assert type(again) is type(opt)
    assert (again.replicas_to_aggregate, again.total_num_replicas) == (4, 5)
    assert again.get_config() == opt.get_config()
    assert type(again.inner_optimizer) is type(opt.inner_optimizer)
    assert again.get_config()["ask_before_send_min_bytes"] == 4096
    assert again.get_config()["quorum_policy"] == {
        "policy": "timeout_degrade", "min_replicas_to_aggregate": 3,
        "quorum_timeout_s": 2.5}


def test_model_save_and_load(tmp_path):
    model = _train(SyncReplicasWithBackups(tf.keras.optimizers.Adam(0.01), 2,
                                           3))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded.optimizer, SyncReplicasWithBackups)
    assert loaded.optimizer.replicas_to_aggregate == 2
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["adam", "legacy_adam"])
def test_checkpoint_keys_are_the_wrapped_optimizers(name, tmp_path):
    def keys(optimizer):
        model = _train(optimizer)
        path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
            str(tmp_path / ("w" if isinstance(
                optimizer, SyncReplicasWithBackups) else "p")))
        return sorted(k for k, _ in tf.train.list_variables(path))
    assert keys(SyncReplicasWithBackups(FAMILIES[name](), 2, 3)) == \
        keys(FAMILIES[name]())


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(TypeError, match="wraps a tf-keras optimizer"):
        SyncReplicasWithBackups("adam", 2, 3)
    with pytest.raises(ValueError, match="at least replicas_to_aggregate"):
        SyncReplicasWithBackups(tf.keras.optimizers.SGD(), 4, 3)
    with pytest.raises(ValueError, match="at least 1"):
        SyncReplicasWithBackups(tf.keras.optimizers.SGD(), 0, 3)
    for bad in (-1, 1.5, True, "1MB"):
        with pytest.raises(ValueError, match="ask_before_send_min_bytes must"):
            SyncReplicasWithBackups(tf.keras.optimizers.SGD(), 2, 3,
                                    ask_before_send_min_bytes=bad)
    with pytest.raises(TypeError, match="already a SyncReplicasWithBackups"):
        SyncReplicasWithBackups(
            SyncReplicasWithBackups(tf.keras.optimizers.SGD(), 1), 1)


def test_a_push_asks_leave_only_with_backups_static_shapes_and_enough_bytes():
    from ps_sync.protocol import asks_leave
    dense = [tf.zeros([64, 256]), tf.zeros([256])]  # 66,560 bytes
    assert asks_leave(dense, backups=True, min_bytes=66560)
    assert not asks_leave(dense, backups=True, min_bytes=66561)
    assert not asks_leave(dense, backups=False, min_bytes=0)
    assert asks_leave(dense, backups=True, min_bytes=0)
    sparse = tf.IndexedSlices(tf.zeros([4, 8], tf.float64),
                              tf.zeros([4], tf.int64), tf.constant([100, 8]))
    assert asks_leave([sparse], backups=True, min_bytes=4 * 8 * 8 + 4 * 8)
    assert not asks_leave([sparse], backups=True, min_bytes=4 * 8 * 8 + 33)

    decided = []

    @tf.function(input_signature=[tf.TensorSpec([None, 8])])
    def dynamic(values):
        # Zeros cannot stand in for a gradient of unknown shape: no asking.
        decided.append(asks_leave([values], backups=True, min_bytes=0))
    dynamic.get_concrete_function()
    assert decided == [False]


def _wrong_cluster_size():
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(2, 1)
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        model.compile(SyncReplicasWithBackups(tf.keras.optimizers.SGD(), 2, 3),
                      "mse")
    dataset = tf.keras.utils.experimental.DatasetCreator(
        lambda _: tf.data.Dataset.from_tensors(
            (tf.zeros([1, 2]), tf.zeros([1, 1]))).repeat())
    try:
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    except ValueError as e:
        return str(e)
    return None


def test_cluster_that_does_not_match_is_refused_naming_the_setting():
    message = fresh_interpreter.run(__name__ + ":_wrong_cluster_size",
                                    timeout=120)
    assert message is not None
    assert "total_num_replicas=3 but the cluster has 2 workers" in message


def _second_variable_list():
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(2, 1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        a, b = tf.Variable(1.0), tf.Variable(2.0)
        opt = SyncReplicasWithBackups(tf.keras.optimizers.SGD(0.1), 1, 2)

    def make_step(variables):
        @tf.function
        def step():
            def replica_fn():
                opt.apply_gradients([(tf.ones([]), v) for v in variables])
            strategy.run(replica_fn)
        return step

    coordinator.schedule(make_step([a, b]))
    coordinator.join()
    try:
        coordinator.schedule(make_step([a]))
        coordinator.join()
    except ValueError as e:
        return str(e)
    return None


def test_a_second_variable_list_is_refused():
    message = fresh_interpreter.run(__name__ + ":_second_variable_list",
                                    timeout=120)
    assert message and "one fixed list of variables" in message
