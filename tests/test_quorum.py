"""Quorum policies: the decisions (pure Python) and a step whose quorum
cannot arrive, released by each timeout policy on a real cluster."""
import pytest

from ps_sync import quorum
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _open(count, open_for_s, admitted=(0,), n=3, total=3):
    return quorum.OpenStep(step=7, count=count, admitted=tuple(admitted),
                           open_for_s=open_for_s, replicas_to_aggregate=n,
                           total_num_replicas=total)


def test_fixed_never_intervenes():
    assert quorum.FixedQuorum().decide(_open(1, 1e9)) is None


def test_degrade_waits_for_timeout_and_minimum():
    policy = quorum.TimeoutThenDegrade(min_replicas_to_aggregate=2,
                                       quorum_timeout_s=5)
    assert policy.decide(_open(2, 4.9, (0, 1))) is None       # too early
    assert policy.decide(_open(1, 60, (0,))) is None           # too few
    assert policy.decide(_open(2, 5.0, (0, 1))).quorum == 2


def test_fail_names_the_missing_workers():
    decision = quorum.TimeoutThenFail(3).decide(_open(1, 3.5, (1,), n=2,
                                                      total=4))
    assert "worker-0, worker-2, worker-3" in decision.fail
    assert "step 7 has 1 of 2" in decision.fail


def test_config_round_trip_and_errors():
    policy = quorum.TimeoutThenDegrade(2, 1.5)
    again = quorum.from_config(policy.get_config())
    assert isinstance(again, quorum.TimeoutThenDegrade)
    assert (again.min_replicas_to_aggregate, again.quorum_timeout_s) == (2, 1.5)
    assert isinstance(quorum.from_config(None), quorum.FixedQuorum)
    with pytest.raises(ValueError, match="unknown quorum policy 'sometimes'"):
        quorum.from_config({"policy": "sometimes"})
    with pytest.raises(ValueError, match="min_replicas_to_aggregate"):
        quorum.TimeoutThenDegrade(0, 1)


def _stuck_worker_run(policy, max_wait_s=600.0):
    """3 workers, all 3 needed, worker 2 stalls 6 s on every batch."""
    import tensorflow as tf
    from ps_sync.optimizer import SyncReplicasWithBackups
    from ps_sync.testing import inprocess_cluster
    from tests import probe

    strategy = inprocess_cluster.strategy(3, 1)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        model = probe.ProbeModel(3)
        model.build([None, 1])
        opt = SyncReplicasWithBackups(tf.keras.optimizers.SGD(probe.LR), 3, 3,
                                      quorum_policy=policy,
                                      max_wait_s=max_wait_s)
    iterator = iter(coordinator.create_per_worker_dataset(
        probe.delayed_dataset_fn([0.0, 0.0, 6.0], 3)))

    step = probe.train_step_fn(strategy, model, opt)

    error = None
    try:
        for _ in range(12):
            coordinator.schedule(step, args=(iterator,))
        coordinator.join()
    except Exception as e:  # pylint: disable=broad-except
        error = "%s: %s" % (type(e).__name__, e)
    opt.telemetry.drain()
    steps = opt.telemetry.steps
    return {"error": error, "iterations": int(opt.iterations.numpy()),
            "degraded": [s["admitted"] for s in steps if s["degraded"]],
            "full": [s["admitted"] for s in steps if not s["degraded"]],
            "stats": opt.sync_stats()}


def test_timeout_then_degrade_closes_steps_without_the_stuck_worker():
    r = fresh_interpreter.run(
        HERE + ":_stuck_worker_run",
        dict(policy={"policy": "timeout_degrade",
                     "min_replicas_to_aggregate": 2,
                     "quorum_timeout_s": 0.5}), timeout=240)
    assert r["error"] is None
    assert len(r["degraded"]) >= 3
    # Degraded steps hold the two live workers, never fewer than the minimum.
    assert all(sorted(a) == [0, 1] for a in r["degraded"])
    assert r["iterations"] == len(r["degraded"]) + len(r["full"])


def test_timeout_then_fail_stops_with_the_missing_worker_named():
    r = fresh_interpreter.run(
        HERE + ":_stuck_worker_run",
        dict(policy={"policy": "timeout_fail", "quorum_timeout_s": 0.5}),
        timeout=240)
    assert r["error"] is not None
    assert "worker-2" in r["error"] and "quorum_timeout_s=0.5" in r["error"]
    assert r["degraded"] == []


def test_max_wait_releases_waiters_but_never_applies_a_short_step():
    r = fresh_interpreter.run(HERE + ":_stuck_worker_run",
                              dict(policy=None, max_wait_s=0.5), timeout=240)
    assert r["error"] is None
    released = sum(w["wait_released"] for w in r["stats"]["per_worker"][:2])
    assert released >= 2
    # The fixed quorum still holds: every applied update has all 3 workers.
    assert r["degraded"] == []
    assert all(sorted(a) == [0, 1, 2] for a in r["full"])


def test_a_stalled_step_is_logged_naming_the_workers_it_waits_for():
    from ps_sync.quorum import OpenStep
    from ps_sync.watchdog import stall_message
    text = stall_message(OpenStep(step=7, count=1, admitted=(0,),
                                  open_for_s=61.2, replicas_to_aggregate=2,
                                  total_num_replicas=3))
    assert text.startswith("ps_sync: step 7 has waited 61 s for its quorum: "
                           "1 of 2 fresh gradients; workers that have not "
                           "contributed: worker-1, worker-2. With more than 1")
