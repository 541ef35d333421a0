"""With deterministic data, synchronous training with backups follows exactly
the trajectory of single-process mini-batch SGD over the admitted batches."""
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _trajectory(workers, replicas, closures, legacy):
    import numpy as np
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    per_worker, batch, dim, lr = 64, 8, 4, 0.1
    ids = workers * per_worker
    rng = np.random.RandomState(0)
    xs = rng.randn(ids, batch, dim).astype("float32")
    true_w = rng.randn(dim).astype("float32")
    ys = (xs @ true_w + 0.1 * rng.randn(ids, batch)).astype("float32")

    strategy = inprocess_cluster.strategy(workers, 2)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        w = tf.Variable(tf.zeros([dim]), name="w")
        t = tf.Variable(0.0, name="t")
        marks = tf.Variable(tf.zeros([probe.MAX_STEPS, ids]), name="marks")
        sgd = (tf.keras.optimizers.legacy.SGD if legacy
               else tf.keras.optimizers.SGD)(lr)
        opt = SyncReplicasWithBackups(sgd, replicas, workers)

    def dataset_fn():
        first = tf.cast(probe.worker_index(), tf.int64) * per_worker
        return tf.data.Dataset.range(per_worker).map(
            lambda i: (first + i, tf.gather(xs, first + i),
                       tf.gather(ys, first + i)))

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

    @tf.function
    def step(it):
        def replica_fn(batch_id, x, y):
            with tf.GradientTape() as tape:
                version = tf.cast(tf.stop_gradient(t), tf.int32)
                mark = (tf.one_hot(version, probe.MAX_STEPS)[:, None]
                        * tf.one_hot(batch_id, ids)[None, :])
                loss = (tf.reduce_mean((tf.linalg.matvec(x, w) - y) ** 2)
                        - t / lr + tf.reduce_sum(marks * mark) / lr)
            grads = tape.gradient(loss, [w, t, marks])
            opt.apply_gradients(zip(grads, [w, t, marks]))
        return strategy.run(replica_fn, args=next(it))

    for _ in range(closures):
        coordinator.schedule(step, args=(iterator,))
    coordinator.join()

    steps = int(t.numpy())
    admitted = np.rint(-marks.numpy() * replicas).astype(int)
    replay = np.zeros(dim, np.float64)
    batches = []
    for k in range(steps):
        row = np.nonzero(admitted[k])[0]
        assert len(row) == replicas and admitted[k].sum() == replicas, row
        batches.append(row.tolist())
        grads = [2 * xs[i].T @ (xs[i] @ replay - ys[i]) / batch for i in row]
        replay = replay - lr * np.mean(grads, axis=0)
    return {"steps": steps, "batches": batches, "w": w.numpy().tolist(),
            "replay": replay.tolist(),
            "iterations": int(opt.iterations.numpy())}


def test_trajectory_equals_minibatch_sgd_over_admitted_batches():
    import numpy as np
    r = fresh_interpreter.run(
        HERE + ":_trajectory",
        dict(workers=3, replicas=2, closures=36, legacy=False), timeout=240)
    assert r["steps"] == r["iterations"] >= 8
    # Each admitted batch is used once, and batches of one step come from
    # distinct workers (64 batch ids per worker).
    flat = [i for b in r["batches"] for i in b]
    assert len(flat) == len(set(flat))
    assert all(len({i // 64 for i in b}) == 2 for b in r["batches"])
    np.testing.assert_allclose(r["w"], r["replay"], rtol=1e-4, atol=1e-5)
    assert np.abs(r["w"]).sum() > 0.1  # it really moved
