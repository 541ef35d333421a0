"""The input pipelines on a real ParameterServerStrategy cluster (in-process,
in a fresh interpreter): each worker resolves its own index inside the
coordinator's dataset_fn and reads its own stream; DatasetCreator works with
model.fit.
"""
import ps_sync.keras_env  # noqa: F401

from ps_sync.testing import fresh_interpreter

NUM_WORKERS = 2


def _per_worker_batches(strategy, coordinator, dataset_fn, steps,
                        max_rounds=10):
    """Run rounds of `steps` closures that each take one batch, until both
    workers have run some (the coordinator hands closures to whichever
    worker is free); return {worker index: [batch, ...]} in each worker's
    execution order."""
    import tensorflow as tf

    def per_worker_dataset_fn():
        # As tf-keras' DatasetCreator path does it.
        return strategy.distribute_datasets_from_function(dataset_fn)

    iterator = iter(coordinator.create_per_worker_dataset(
        per_worker_dataset_fn))

    coordinator_api = tf.distribute.coordinator
    worker_index = coordinator_api.experimental_get_current_worker_index

    @tf.function
    def step(it):
        x, y = next(it)
        return worker_index(), x, y

    by_worker = {}
    for _ in range(max_rounds):
        results = [coordinator.schedule(step, args=(iterator,))
                   for _ in range(steps)]
        coordinator.join()
        for r in results:
            index, x, y = r.fetch()
            by_worker.setdefault(int(index), []).append((x, y))
        if len(by_worker) == NUM_WORKERS:
            break
    return by_worker


def _matches_local(by_worker, local_dataset):
    """Per worker: does its stream equal the locally built stream for it?"""
    import numpy as np
    out = {}
    for index, batches in by_worker.items():
        local = list(local_dataset(index).take(len(batches))
                     .as_numpy_iterator())
        out[str(index)] = all(
            np.allclose(x, lx, atol=1e-5) and np.array_equal(y, ly)
            for (x, y), (lx, ly) in zip(batches, local))
    return out


def _cluster_body(data_dir):
    import numpy as np
    import tensorflow as tf

    from models import digits, imagenet, imagenet_fixture, registry
    from ps_sync.testing import inprocess_cluster

    strategy = inprocess_cluster.strategy(NUM_WORKERS)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    result = {}

    # Digits: 8 batches of 16 spread over both workers.
    by_worker = _per_worker_batches(
        strategy, coordinator, digits.per_worker_dataset_fn(16, seed=5), 8)
    result["digits_workers"] = sorted(by_worker)
    result["digits_match"] = _matches_local(
        by_worker, lambda i: digits.train_dataset(16, 5, worker_index=i))
    first = {i: b[0][0] for i, b in by_worker.items()}
    result["digits_first_batches_differ"] = (
        len(first) == 2 and not np.array_equal(first[0], first[1]))

    # ImageNet TFRecords, Inception preprocessing with per-worker seeds.
    imagenet_fixture.write_tfrecords(data_dir, num_train=16)
    fn = imagenet.per_worker_dataset_fn("tfrecord", data_dir, 4,
                                        image_size=75, seed=1)
    by_worker = _per_worker_batches(strategy, coordinator, fn, 6)
    result["imagenet_workers"] = sorted(by_worker)
    result["imagenet_match"] = _matches_local(
        by_worker, lambda i: imagenet.train_dataset(
            "tfrecord", data_dir, 4, image_size=75, seed=1, worker_index=i))
    result["imagenet_range"] = [
        float(min(x.min() for b in by_worker.values() for x, _ in b)),
        float(max(x.max() for b in by_worker.values() for x, _ in b))]

    # TFDS imagenet2012 prepared from ILSVRC-format tars.
    tfds_dir = data_dir + "_tfds"
    imagenet_fixture.write_ilsvrc_tars(tfds_dir + "/downloads/manual",
                                       num_train=12)
    imagenet.prepare_tfds(tfds_dir)
    fn = imagenet.per_worker_dataset_fn("tfds", tfds_dir, 3, image_size=75,
                                        seed=2)
    by_worker = _per_worker_batches(strategy, coordinator, fn, 6)
    result["tfds_workers"] = sorted(by_worker)
    result["tfds_match"] = _matches_local(
        by_worker, lambda i: imagenet.train_dataset(
            "tfds", tfds_dir, 3, image_size=75, seed=2, worker_index=i))

    # model.fit with a DatasetCreator, as the training program will.
    with strategy.scope():
        model = registry.build_model("small_cnn", digits.NUM_CLASSES)
        model.compile(tf.keras.optimizers.SGD(0.05),
                      steps_per_execution=1,
                      **registry.compile_kwargs("small_cnn"))
    history = model.fit(
        tf.keras.utils.experimental.DatasetCreator(
            digits.per_worker_dataset_fn(32, seed=0)),
        epochs=2, steps_per_epoch=20, verbose=0)
    result["fit_loss"] = [float(v) for v in history.history["loss"]]
    return result


def test_per_worker_streams_on_a_parameter_server_cluster(tmp_path):
    result = fresh_interpreter.run(
        "tests.test_input_pss:_cluster_body",
        {"data_dir": str(tmp_path / "imagenet")}, timeout=240)
    # Both workers ran closures, and each read exactly the stream that its
    # own index gives locally: the index was resolved on the worker.
    assert result["digits_workers"] == [0, 1]
    assert result["digits_match"] == {"0": True, "1": True}
    assert result["digits_first_batches_differ"]
    assert result["imagenet_workers"] == [0, 1]
    assert result["imagenet_match"] == {"0": True, "1": True}
    assert result["tfds_workers"] == [0, 1]
    assert result["tfds_match"] == {"0": True, "1": True}
    low, high = result["imagenet_range"]
    assert -1.0 <= low < 0.0 < high <= 1.0
    loss = result["fit_loss"]
    assert len(loss) == 2 and all(0 < v < 5 for v in loss)
    assert loss[1] < loss[0]
