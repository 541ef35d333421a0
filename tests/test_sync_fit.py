"""`model.fit` under ParameterServerStrategy with the optimizer swapped in:
epochs ending mid-step, steps_per_execution > 1, early stop, BatchNorm and
Embedding, both optimizer families."""
import pytest

from ps_sync.testing import fresh_interpreter

HERE = __name__



def _fit_probe(steps_per_execution, epochs, stop_after, steps_per_epoch):
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    workers, replicas = 3, 2
    strategy = inprocess_cluster.strategy(workers, 2)

    class Stop(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == stop_after:
                self.model.stop_training = True

    def dataset_fn(input_context):
        del input_context
        return tf.data.Dataset.from_tensors(
            (tf.zeros([1, 1]), tf.zeros([1, 1]))).repeat()

    with strategy.scope():
        model = probe.ProbeModel(workers)
        model.compile(SyncReplicasWithBackups(
            tf.keras.optimizers.SGD(probe.LR), replicas, workers),
            loss=probe.probe_loss, steps_per_execution=steps_per_execution)
    history = model.fit(
        tf.keras.utils.experimental.DatasetCreator(dataset_fn),
        epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[Stop()],
        verbose=0)
    steps, rows = probe.decode(model, replicas)
    return {"epochs_run": len(history.history["loss"]), "steps": steps,
            "iterations": int(model.optimizer.iterations.numpy()),
            "stats": model.optimizer.sync_stats()}


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_fit_probe_epochs_uneven_steps_and_early_stop(steps_per_execution):
    r = fresh_interpreter.run(
        HERE + ":_fit_probe",
        dict(steps_per_execution=steps_per_execution, epochs=6, stop_after=4,
             steps_per_epoch=7), timeout=300)
    assert r["epochs_run"] == 4  # the callback's stop took effect
    assert r["steps"] == r["iterations"] >= 4
    per_worker = r["stats"]["per_worker"]
    pushes = sum(sum(v for k, v in w.items() if not k.startswith("wait"))
                 for w in per_worker)
    # steps_per_epoch counts worker steps (pushes tried), whatever
    # steps_per_execution groups them into closures.
    assert pushes == 4 * 7
    admitted = sum(w["admitted"] + w["admitted_closed"] for w in per_worker)
    assert 2 * r["steps"] <= admitted <= 2 * r["steps"] + 1


def _fit_bn_embedding(legacy, steps_per_execution):
    import numpy as np
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster

    workers, replicas = 3, 2
    strategy = inprocess_cluster.strategy(workers, 2)
    rng = np.random.RandomState(0)
    x = rng.randint(0, 20, size=(512, 3)).astype("int32")
    y = (x[:, 0] >= 10).astype("float32")

    def dataset_fn(input_context):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return ds.shuffle(512, seed=input_context.input_pipeline_id).repeat() \
            .batch(32)

    with strategy.scope():
        model = tf.keras.Sequential([
            tf.keras.layers.Embedding(20, 8, input_length=3),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(16),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.ReLU(),
            tf.keras.layers.Dense(1, activation="sigmoid")])
        adam = (tf.keras.optimizers.legacy.Adam if legacy
                else tf.keras.optimizers.Adam)(0.05)
        model.compile(SyncReplicasWithBackups(adam, replicas, workers),
                      loss="binary_crossentropy", metrics=["accuracy"],
                      steps_per_execution=steps_per_execution)
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                        epochs=4, steps_per_epoch=10, verbose=0)
    bn = model.layers[3]
    accuracy = float(np.mean((model.predict(x, verbose=0)[:, 0] > 0.5) == y))
    return {"loss": history.history["loss"],
            "iterations": int(model.optimizer.iterations.numpy()),
            "moving_mean_moved": bool(np.any(bn.moving_mean.numpy() != 0)),
            "accuracy": accuracy, "stats": model.optimizer.sync_stats()}


@pytest.mark.parametrize("legacy,steps_per_execution", [(False, 2),
                                                        (True, 1)])
def test_fit_batchnorm_embedding_learns(legacy, steps_per_execution):
    r = fresh_interpreter.run(
        HERE + ":_fit_bn_embedding",
        dict(legacy=legacy, steps_per_execution=steps_per_execution),
        timeout=300)
    assert len(r["loss"]) == 4
    assert r["iterations"] >= 8
    assert r["moving_mean_moved"]
    # A separable task: synchronous training must actually learn it.
    assert r["accuracy"] >= 0.9, r


def _backup_and_restore():
    import tempfile
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    strategy = inprocess_cluster.strategy(3, 1)
    backup_dir = tempfile.mkdtemp()

    class Interrupt(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("preempted")

    def dataset_fn(input_context):
        del input_context
        return tf.data.Dataset.from_tensors(
            (tf.zeros([1, 1]), tf.zeros([1, 1]))).repeat()

    def build():
        with strategy.scope():
            model = probe.ProbeModel(3)
            model.compile(SyncReplicasWithBackups(
                tf.keras.optimizers.SGD(probe.LR), 2, 3),
                loss=probe.probe_loss)
        return model

    first = build()
    callbacks = [tf.keras.callbacks.BackupAndRestore(backup_dir)]
    try:
        first.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                  epochs=4, steps_per_epoch=9, verbose=0,
                  callbacks=callbacks + [Interrupt()])
    except KeyboardInterrupt:
        pass
    interrupted_at = int(first.optimizer.iterations.numpy())
    second = build()  # a restarted job: fresh variables
    history = second.fit(
        tf.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=4,
        steps_per_epoch=9, verbose=0, callbacks=callbacks)
    steps, _ = probe.decode(second, 2)
    return {"interrupted_at": interrupted_at,
            "epochs_after_restore": len(history.history["loss"]),
            "iterations": int(second.optimizer.iterations.numpy()),
            "steps": steps}


def test_backup_and_restore_resumes_the_sync_run():
    r = fresh_interpreter.run(HERE + ":_backup_and_restore", timeout=300)
    # Two of four epochs were done; the restarted fit runs the other two and
    # continues the restored update count with whole updates only.
    assert r["epochs_after_restore"] == 2
    assert r["iterations"] == r["steps"] > r["interrupted_at"] >= 2
