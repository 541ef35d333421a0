"""The paper's configuration in miniature: full-size Inception-v3 with its
recipe (RMSProp, a staircase decay, a moving average of the weights) under
SyncReplicasWithBackups, its variables spread over 8 parameter servers as in
cluster_specs/inception_50_plus_4.json, on an in-process cluster of 2
workers, for a few real updates. The update is cut per server there; tracing
its push once took 40 s longer than the whole update's (a quadratic check,
session 14)."""
import pytest

from ps_sync.testing import fresh_interpreter

HERE = __name__
NUM_PS = 8


def _three_updates():
    import numpy as np
    import tensorflow as tf
    from models import recipes, registry
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.shard_apply import moving_average
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(2, NUM_PS)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        model = registry.build_model("inception_v3", 1000)
        inner = recipes.make_optimizer(recipes.INCEPTION,
                                       updates_per_epoch=1)
        opt = SyncReplicasWithBackups(inner, 2, 2)
    side = model.input_shape[1]
    before = [v.numpy() for v in model.trainable_variables]

    @tf.function
    def step():
        def replica_fn():
            x = tf.random.uniform([2, side, side, 3], -1.0, 1.0)
            y = tf.random.uniform([2], 0, 1000, tf.int32)
            with tf.GradientTape() as tape:
                outputs = tf.nest.flatten(model(x, training=True))
                loss = tf.add_n([
                    weight * tf.reduce_mean(
                        tf.keras.losses.sparse_categorical_crossentropy(
                            y, logits, from_logits=True))
                    for weight, logits in zip([1.0, 0.4], outputs)])
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(replica_fn)

    variables = model.trainable_variables
    history = []  # the weights after each update
    for _ in range(3):
        for _ in range(2):  # N = 2 pushes: one update
            coordinator.schedule(step)
        coordinator.join()
        history.append([v.numpy() for v in variables])
    after = history[-1]
    averages = [moving_average(inner, v) for v in variables]
    m = recipes.INCEPTION.ema_momentum
    expected = [  # tf-keras' average after 3 updates, from its start
        m ** 3 * b + (1 - m) * (m ** 2 * w1 + m * w2 + w3)
        for b, w1, w2, w3 in zip(before, *history)]
    return {
        "devices": len({v.device for v in model.variables}),
        "cut": opt.sync_stats()["update_cut_per_server"],
        "updates": int(opt.iterations.numpy()),
        "learning_rate": recipes.current_learning_rate(inner),
        "variables": len(variables),
        "moved": sum(int(not np.array_equal(a, b))
                     for a, b in zip(before, after)),
        "finite": all(bool(np.isfinite(a).all()) for a in after),
        "averages_beside": all(a.device == v.device
                               for a, v in zip(averages, variables)),
        "averages_exact": all(
            bool(np.allclose(a.numpy(), e, rtol=1e-5, atol=1e-6))
            for a, e in zip(averages, expected)),
        "averages_moved": sum(int(not np.array_equal(a.numpy(), b))
                              for a, b in zip(averages, before)),
    }


@pytest.mark.timeout(400)
def test_full_inception_recipe_updates_on_eight_parameter_servers():
    r = fresh_interpreter.run(HERE + ":_three_updates", timeout=380)
    assert r["devices"] == NUM_PS
    assert r["cut"] is True  # RMSProp + weight averaging, per server
    assert r["updates"] == 3  # 6 pushes, N = 2
    # Staircase decay every 2 epochs of 1 update: 0.045 x 0.94 at update 3.
    assert r["learning_rate"] == pytest.approx(0.045 * 0.94)
    assert r["finite"]
    assert r["moved"] == r["variables"] > 150
    assert r["averages_beside"] and r["averages_exact"]
    assert r["averages_moved"] == r["variables"]
