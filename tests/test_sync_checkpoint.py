"""Checkpoints: consistent saves every K updates while training, and a
restore mid-run after which the protocol realigns to the restored step."""
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _save_restore_continue(legacy):
    import os
    import tempfile
    import tensorflow as tf
    from ps_sync.checkpointing import UpdateCheckpointer
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    strategy = inprocess_cluster.strategy(3, 2)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        model = probe.ProbeModel(3)
        model.build([None, 1])
        sgd = (tf.keras.optimizers.legacy.SGD if legacy
               else tf.keras.optimizers.SGD)(probe.LR)
        opt = SyncReplicasWithBackups(sgd, 2, 3)
    iterator = iter(coordinator.create_per_worker_dataset(
        probe.delayed_dataset_fn([], 3)))

    step = probe.train_step_fn(strategy, model, opt)

    def train(closures):
        for _ in range(closures):
            coordinator.schedule(step, args=(iterator,))
        coordinator.join()

    directory = tempfile.mkdtemp()
    checkpoint = tf.train.Checkpoint(model=model, optimizer=opt)
    checkpointer = UpdateCheckpointer(checkpoint, directory, opt,
                                      every_n_updates=3,
                                      poll_interval_s=0.05)
    checkpointer.start()
    # Saves happen while closures run; a save holds step closes, so how many
    # fit in a round depends on the machine: train until there are three.
    for _ in range(30):
        train(20)
        if len(checkpointer.saves) >= 3:
            break
    thread = checkpointer._thread  # pylint: disable=protected-access
    checkpointer.stop()
    periodic = list(checkpointer.saves)
    reached = int(opt.iterations.numpy())
    # Every periodic checkpoint holds a whole number of updates: restoring
    # it must give a model whose marks decode (t == iterations, N per row).
    consistent = []
    for saved_step, path in periodic:
        checkpoint.restore(path)
        steps, _ = probe.decode(model, 2)
        consistent.append(steps == int(opt.iterations.numpy()) == saved_step)
    checkpoint.restore(periodic[0][1])
    restored = int(opt.iterations.numpy())
    train(24)
    steps, rows = probe.decode(model, 2)
    return {"reached": reached, "periodic": [s for s, _ in periodic],
            "consistent": consistent, "restored": restored,
            "after": int(opt.iterations.numpy()), "steps": steps,
            "files": sorted(os.listdir(directory)),
            "looks": checkpointer.looks, "alive": thread.is_alive(),
            "stats": opt.sync_stats()}


def test_periodic_saves_are_consistent_and_restore_realigns():
    r = fresh_interpreter.run(HERE + ":_save_restore_continue",
                              dict(legacy=False), timeout=300)
    assert len(r["periodic"]) >= 2, r
    assert all(r["consistent"]), r
    assert r["periodic"] == sorted(r["periodic"])
    assert all(b - a >= 3 for a, b in zip(r["periodic"], r["periodic"][1:]))
    assert r["restored"] == r["periodic"][0] < r["reached"]
    # After the restore the step continues from the restored one, one per
    # update, and the decoded history is whole (N pushes per update).
    assert r["after"] == r["steps"] > r["restored"]
    assert r["stats"]["published_step"] == r["after"]
    assert "checkpoint" in r["files"]
    # It looked at the PS once to arm the hold, then only when a close
    # handed it a step (polling every 50 ms would look dozens of times),
    # and `stop` woke it from its wait.
    assert r["looks"] <= len(r["periodic"]) + 1, r
    assert not r["alive"], r


def test_legacy_optimizer_checkpoint_restore():
    r = fresh_interpreter.run(HERE + ":_save_restore_continue",
                              dict(legacy=True), timeout=300)
    assert all(r["consistent"]) and len(r["periodic"]) >= 2, r
    assert r["after"] == r["steps"] > r["restored"]
