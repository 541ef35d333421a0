"""The wrapped optimizer's update cut per server equals the whole update, and
reads none of the optimizer's own variables (the scalars come as values)."""
import ps_sync.keras_env  # noqa: F401

import numpy as np
import pytest
import tensorflow as tf

from ps_sync.optimizer import SyncReplicasWithBackups
from tests.test_optimizer_wrapper import FAMILIES



def _xla(optimizer):
    """tf-keras compiles the update with XLA (`jit_compile`) only where it
    finds a GPU; forced here."""
    optimizer.jit_compile = True
    return optimizer


CUT = dict(FAMILIES)
CUT.update({
    "adamw": lambda: tf.keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "adagrad": lambda: tf.keras.optimizers.Adagrad(0.1),
    "schedule_adam": lambda: tf.keras.optimizers.Adam(
        tf.keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)),
    "clipnorm_sgd": lambda: tf.keras.optimizers.SGD(0.1, clipnorm=0.01),
    # The Inception recipe's moving average of the weights.
    "ema_rmsprop": lambda: tf.keras.optimizers.RMSprop(
        0.1, use_ema=True, ema_momentum=0.9),
    "ema_overwrite_sgd": lambda: tf.keras.optimizers.SGD(
        0.1, momentum=0.5, use_ema=True, ema_momentum=0.5,
        ema_overwrite_frequency=2),
    "xla_adam": lambda: _xla(tf.keras.optimizers.Adam(0.01)),
    "xla_ema_sgd": lambda: _xla(tf.keras.optimizers.SGD(
        0.1, momentum=0.5, use_ema=True, ema_momentum=0.9)),
    "legacy_adagrad": lambda: tf.keras.optimizers.legacy.Adagrad(0.1),
    "legacy_decay_sgd": lambda: tf.keras.optimizers.legacy.SGD(
        0.1, momentum=0.5, decay=0.3),
})
GRADS = [[np.full([3, 2], 0.5, np.float32), np.arange(4, dtype=np.float32)],
         [np.full([3, 2], -1.0, np.float32), np.ones([4], np.float32)],
         [np.full([3, 2], 2.0, np.float32), -np.arange(4, dtype=np.float32)]]


def _variables():
    return [tf.Variable(tf.ones([3, 2]), name="w"),
            tf.Variable(tf.linspace(-1.0, 1.0, 4), name="b")]


def _state(opt):
    """The optimizer's variables (a method on the legacy family)."""
    variables = opt.variables
    return list(variables() if callable(variables) else variables)


def _optimizer_state(opt):
    return [np.asarray(v.numpy()) for v in _state(opt)]


@pytest.mark.parametrize("name", sorted(CUT))
def test_update_cut_per_server_equals_the_whole_update(name):
    whole_vars, cut_vars = _variables(), _variables()
    whole = SyncReplicasWithBackups(CUT[name](), 2, 3)
    cut = SyncReplicasWithBackups(CUT[name](), 2, 3)
    whole._build_inner(whole_vars)
    cut._build_inner(cut_vars)
    by_server = cut._shard_apply()
    assert by_server.unsupported_reason() is None, name
    strategy = tf.distribute.get_strategy()

    @tf.function
    def whole_step(grads):
        whole._cross_replica_apply(strategy, list(zip(grads, whole_vars)),
                                   None)

    @tf.function
    def cut_step(grads):
        iterations = cut.iterations
        values = by_server.scalar_values(iterations.read_value())
        by_server.record(values)
        # Each variable alone, as on its own server.
        for grad, var in zip(grads, cut_vars):
            by_server.apply([(grad, var)], values)
        iterations.assign_add(1)

    for grads in GRADS:
        whole_step([tf.constant(g) for g in grads])
        cut_step([tf.constant(g) for g in grads])
    for a, b in zip(whole_vars, cut_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6,
                                   err_msg=name)
    # Slots, step counter, learning-rate variables: the same state.
    for a, b in zip(_optimizer_state(whole), _optimizer_state(cut)):
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
    assert int(cut.iterations.numpy()) == len(GRADS)
    # Not vacuous: the variables moved.
    assert not np.allclose(cut_vars[0].numpy(), 1.0)

    # The traced update reads none of the optimizer's scalar variables: on a
    # cluster they live on one server and the branch runs on another.
    values = by_server.scalar_values(tf.constant(0, tf.int64))  # eager

    @tf.function
    def one_update(grad):
        by_server.apply([(grad, cut_vars[0])], values)

    graph = one_update.get_concrete_function(
        tf.TensorSpec([3, 2], tf.float32)).graph
    captured = {id(ext) for ext, _ in graph.captures}
    scalars = [v for v in _state(cut) if v.shape.rank == 0]
    assert scalars, name  # the step counter at least
    read = [v.name for v in scalars if id(v.handle) in captured]
    assert not read, (name, read)
    # Not vacuous: the branch does capture the variable it updates.
    assert id(cut_vars[0].handle) in captured


@pytest.mark.parametrize("name", ["adam", "legacy_adam"])
def test_the_wrapped_optimizer_is_left_untouched(name, tmp_path):
    """The update is traced on a copy carrying the values: the optimizer
    other threads read (the checkpointer reads `iterations`) and its
    checkpoint keys stay as they were."""
    sync = SyncReplicasWithBackups(CUT[name](), 2, 3)
    variables = _variables()
    sync._build_inner(variables)
    inner = sync.inner_optimizer

    def checkpoint_keys(prefix):
        path = tf.train.Checkpoint(optimizer=sync).write(
            str(tmp_path / prefix))
        return sorted(n for n, _ in tf.train.list_variables(path))

    keys = checkpoint_keys("before")
    attributes = dict(inner.__dict__)
    hyper = dict(getattr(inner, "_hyper", {}))
    by_server = sync._shard_apply()

    @tf.function
    def step():
        by_server.apply([(tf.ones([3, 2]), variables[0])],
                        by_server.scalar_values(tf.constant(0, tf.int64)))

    step()
    assert not np.allclose(variables[0].numpy(), 1.0)  # it did update
    assert inner.__dict__.keys() == attributes.keys()
    for key, value in attributes.items():
        assert inner.__dict__[key] is value, key
    for key, value in hyper.items():
        assert inner._hyper[key] is value, key
    assert checkpoint_keys("after") == keys


@pytest.mark.parametrize("make,reason", [
    (lambda: tf.keras.optimizers.SGD(0.1, global_clipnorm=1.0),
     "global_clipnorm"),
    (lambda: tf.keras.optimizers.Nadam(0.1), "Nadam is not one of"),
    (lambda: tf.keras.optimizers.legacy.Nadam(0.1),
     "legacy Nadam is not one of"),
    (lambda: tf.keras.optimizers.legacy.SGD(0.1, global_clipnorm=1.0),
     "global_clipnorm"),
    (lambda: tf.keras.optimizers.legacy.SGD(
        0.1, gradient_transformers=[lambda gv: gv]), "gradient_transformers"),
    (lambda: type("MySGD", (tf.keras.optimizers.SGD,), {})(0.1),
     "MySGD is not one of"),
])
def test_optimizers_that_couple_variables_keep_the_whole_update(make, reason):
    sync = SyncReplicasWithBackups(make(), 2, 3)
    assert reason in sync._shard_apply().unsupported_reason()
