"""Quorum policies: the decisions (pure Python) and a step whose quorum
cannot arrive, released by each timeout policy on a real cluster."""
import threading
import time
import types

import pytest

from ps_sync import quorum
from ps_sync import steplog
from ps_sync.testing import fresh_interpreter

HERE = __name__


def _open(count, waiting_for_s, admitted=(0,), n=3, total=3):
    # Opened a minute earlier: the timeouts count from the first gradient.
    return quorum.OpenStep(step=7, count=count, admitted=tuple(admitted),
                           open_for_s=waiting_for_s + 60.0,
                           replicas_to_aggregate=n, total_num_replicas=total,
                           waiting_for_s=waiting_for_s)


def test_fixed_never_intervenes():
    assert quorum.FixedQuorum().decide(_open(1, 1e9)) is None


def test_degrade_waits_for_timeout_and_minimum():
    policy = quorum.TimeoutThenDegrade(min_replicas_to_aggregate=2,
                                       quorum_timeout_s=5)
    assert policy.decide(_open(2, 4.9, (0, 1))) is None       # too early
    assert policy.decide(_open(1, 60, (0,))) is None           # too few
    assert policy.decide(_open(2, 5.0, (0, 1))).quorum == 2


def test_timeouts_count_from_the_first_gradient_not_the_step_opening():
    # Workers still starting up (tracing, restoring) are not stragglers.
    nothing_yet = quorum.OpenStep(step=0, count=0, admitted=(),
                                  open_for_s=30.0, replicas_to_aggregate=2,
                                  total_num_replicas=3, waiting_for_s=0.0)
    assert quorum.TimeoutThenFail(1).decide(nothing_yet) is None
    assert quorum.TimeoutThenDegrade(1, 1).decide(nothing_yet) is None
    assert quorum.TimeoutThenFail(1).decide(_open(1, 0.9, (2,))) is None
    assert "step 7 has 1 of 3 fresh gradients 1.0 s after its first" in (
        quorum.TimeoutThenFail(1).decide(_open(1, 1.0, (2,))).fail)


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


def _stuck_worker_run(policy, max_wait_s=600.0, delays=(0.0, 0.0, 6.0),
                      closures=12):
    """3 workers, all 3 needed, worker 2 stalls `delays[2]` (6 s) on every
    batch."""
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
        probe.delayed_dataset_fn(list(delays), 3)))

    step = probe.train_step_fn(strategy, model, opt)

    error = None
    try:
        for _ in range(closures):
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


def test_adaptive_quorum_leaves_a_slow_worker_behind():
    # Workers 0 and 1 take milliseconds a step, worker 2 half a second:
    # steps close between two watchdog polls, so only the PS log shows
    # what waiting for worker 2 costs.
    r = fresh_interpreter.run(
        HERE + ":_stuck_worker_run",
        dict(policy={"policy": "adaptive", "min_replicas_to_aggregate": 2,
                     "warmup_steps": 3},
             delays=(0.0, 0.0, 0.5), closures=40), timeout=240)
    assert r["error"] is None
    assert len(r["degraded"]) >= 3
    assert all(len(a) == 2 for a in r["degraded"])
    assert r["iterations"] == len(r["degraded"]) + len(r["full"])


def test_a_stalled_step_is_logged_naming_the_workers_it_waits_for():
    from ps_sync.quorum import OpenStep
    from ps_sync.watchdog import stall_message
    text = stall_message(OpenStep(step=7, count=1, admitted=(0,),
                                  open_for_s=61.2, replicas_to_aggregate=2,
                                  total_num_replicas=3))
    assert text.startswith("ps_sync: step 7 has waited 61 s for its quorum: "
                           "1 of 2 fresh gradients; workers that have not "
                           "contributed: worker-1, worker-2. With more than 1")


# -- AdaptiveQuorum: decisions on constructed sequences of polls -------------

def _poll(policy, step, count, now, opened, n=4, total=5):
    return policy.decide(quorum.OpenStep(
        step=step, count=count, admitted=tuple(range(count)),
        open_for_s=now - opened, replicas_to_aggregate=n,
        total_num_replicas=total, now=now))


def _observe_step(policy, step, opened, arrivals, closes_at):
    """Polls at each arrival time of a step that closes at `closes_at`;
    returns the decisions."""
    decisions = [_poll(policy, step, k, opened + t, opened)
                 for k, t in enumerate(arrivals, 1)]
    return decisions, opened + closes_at


def test_adaptive_learns_the_best_quorum_and_lowers_to_it():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=2,
                                   explore_every=10, warmup_steps=3)
    # Steps 1-3: the 1st..3rd gradients come at 0.1, 0.25, 0.3 s, the 4th
    # (a straggler) closes the step at 2.0 s. Gain per second: k=2 8.0,
    # k=3 10.0, k=4 2.0: the best quorum is 3.
    t = 100.0
    for step in (1, 2, 3):
        decisions, t = _observe_step(policy, step, t, (0.1, 0.25, 0.3), 2.0)
        assert decisions == [None, None, None]      # warming up
    assert policy.expected_times() == pytest.approx(
        {1: 0.1, 2: 0.25, 3: 0.3, 4: 2.0})
    assert policy.best_quorum(4) == 3
    # Step 4: after warm-up, nothing below 3, then lower to 3 at 3.
    assert _poll(policy, 4, 1, t + 0.1, t) is None
    assert _poll(policy, 4, 2, t + 0.25, t) is None
    assert _poll(policy, 4, 3, t + 0.3, t) == quorum.Decision(quorum=3)
    assert _poll(policy, 4, 3, t + 0.35, t) is None   # once per step
    assert policy.decisions == [(4, 3)]


def test_adaptive_waits_for_n_on_explore_steps_and_before_min():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=3,
                                   explore_every=5, warmup_steps=1,
                                   slack=None, explore_span=None)
    t = 0.0
    _, t = _observe_step(policy, 4, t, (0.1, 0.2, 0.3), 2.0)
    # Step 5 explores (5 % 5 == 0): waits for N whatever the counts.
    assert _poll(policy, 5, 3, t + 0.3, t) is None
    t += 2.0
    # Step 6: a count of 2 is below the minimum of 3.
    assert policy.best_quorum(4) == 3
    assert _poll(policy, 6, 2, t + 0.2, t) is None
    assert _poll(policy, 6, 3, t + 0.3, t) == quorum.Decision(quorum=3)


def test_adaptive_explores_a_few_above_its_target():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=1,
                                   explore_every=2, warmup_steps=1,
                                   explore_span=1, slack=None)
    # Step 1 (N=8): 1st..5th gradients at 0.5..0.9 s, then a wait until
    # 6 s for the rest. Gradients per second are best at k=5.
    for k, at in enumerate((0.5, 0.6, 0.7, 0.8, 0.9), 1):
        assert _poll(policy, 1, k, at, 0.0, n=8, total=8) is None
    t = 6.0
    for k, at in enumerate((0.5, 0.6, 0.7, 0.8), 1):
        assert _poll(policy, 2, k, t + at, t, n=8, total=8) is None
    assert policy.best_quorum(8) == 5
    # Step 2 explores: target 5 + span 1 = 6.
    assert _poll(policy, 2, 5, t + 0.9, t, n=8, total=8) is None
    assert _poll(policy, 2, 6, t + 1.0, t, n=8,
                 total=8) == quorum.Decision(quorum=6)


def test_adaptive_keeps_n_when_every_gradient_comes_together():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=1,
                                   warmup_steps=2)
    t = 0.0
    for step in (1, 2, 3):
        _, t = _observe_step(policy, step, t, (0.9, 0.95, 1.0), 1.0)
    # k / time grows with k: N (4) is best, so no step is lowered.
    assert policy.best_quorum(4) == 4
    assert _poll(policy, 4, 3, t + 1.0, t) is None
    assert policy.decisions == []


def test_adaptive_closes_a_step_stuck_far_beyond_the_usual():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=2,
                                   warmup_steps=2, slack=3.0)
    t = 0.0
    for step in (1, 2):
        _, t = _observe_step(policy, step, t, (0.5, 0.6, 0.9), 1.0)
    assert policy.best_quorum(4) == 4
    # Step 3: more than b workers are stuck; at 3 x 1.0 s it takes 2.
    assert _poll(policy, 3, 2, t + 2.9, t) is None
    assert _poll(policy, 3, 2, t + 3.1, t) == quorum.Decision(quorum=2)


def test_adaptive_skips_history_across_unseen_steps():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=1)
    _poll(policy, 1, 1, 0.1, 0.0)
    _poll(policy, 3, 0, 5.0, 5.0)    # step 2 came and went between polls
    assert policy.expected_times() == {}


def test_adaptive_config_round_trip_and_errors():
    policy = quorum.AdaptiveQuorum(3, window=20, explore_every=7,
                                   warmup_steps=4, gain_exponent=0.5,
                                   slack=None)
    again = quorum.from_config(policy.get_config())
    assert isinstance(again, quorum.AdaptiveQuorum)
    assert again.get_config() == policy.get_config() == {
        "policy": "adaptive", "min_replicas_to_aggregate": 3, "window": 20,
        "explore_every": 7, "warmup_steps": 4, "gain_exponent": 0.5,
        "slack": None, "explore_span": 5}
    with pytest.raises(ValueError, match="min_replicas_to_aggregate"):
        quorum.AdaptiveQuorum(0)
    with pytest.raises(ValueError, match="gain_exponent"):
        quorum.AdaptiveQuorum(2, gain_exponent=1.5)
    with pytest.raises(ValueError, match="slack"):
        quorum.AdaptiveQuorum(2, slack=0.5)
    with pytest.raises(ValueError, match="explore_span"):
        quorum.AdaptiveQuorum(2, explore_span=0)


def test_adaptive_round_trips_through_the_optimizer_config():
    import ps_sync
    import tensorflow as tf
    opt = ps_sync.SyncReplicasWithBackups(
        tf.keras.optimizers.SGD(0.1), 4, 5,
        quorum_policy=ps_sync.AdaptiveQuorum(2, window=30))
    again = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(opt))
    assert again.get_config()["quorum_policy"] == opt.get_config()[
        "quorum_policy"]
    assert again.get_config()["quorum_policy"]["policy"] == "adaptive"
    assert again.get_config()["quorum_policy"]["window"] == 30


# -- AdaptiveQuorum fed exact arrivals (observe) ---------------------------

def _closed(step, offsets, final_s=None):
    return steplog.ClosedStep(
        step=step, opened_at=10.0 * step, closed_at=10.0 * step + offsets[-1],
        quorum=len(offsets), offsets=tuple(offsets),
        final_s=offsets[-1] if final_s is None else final_s)


def _first_poll(policy, step, count, elapsed, n=3):
    # The first poll of the step: the watchdog has not seen it open.
    opened = 10.0 * step
    return policy.decide(quorum.OpenStep(
        step=step, count=count, admitted=tuple(range(count)), open_for_s=0.0,
        replicas_to_aggregate=n, total_num_replicas=n, now=opened + elapsed,
        opened_at=opened))


def test_adaptive_observes_exact_arrivals_and_lowers_to_the_best_k():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=2,
                                   warmup_steps=3, explore_every=100)
    assert _first_poll(policy, 1, 0, 0.0) is None
    # The third gradient 2 s after the others (a paused worker): the
    # second and third came after the close or the record was final, the
    # policy still knows when. k=2: 2 / 0.12 s, k=3: 3 / 2 s.
    policy.observe(_closed(1, (0.1, 0.12, 2.0)))
    policy.observe(_closed(2, (0.1, 0.12), final_s=2.0))  # 3rd: after 2 s
    policy.observe(_closed(3, (0.1, 0.12, 2.0)))
    assert policy.expected_times() == pytest.approx(
        {1: 0.1, 2: 0.12, 3: 2.0})
    assert policy.best_quorum(3) == 2
    # Step 4: lowered on its first poll, timed from its exact opening.
    assert _first_poll(policy, 4, 2, 0.13) == quorum.Decision(quorum=2)
    assert policy.decisions == [(4, 2)]


def test_adaptive_observing_keeps_n_when_every_gradient_comes_together():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=1,
                                   warmup_steps=2)
    _first_poll(policy, 1, 0, 0.0)
    for step in (1, 2, 3):
        policy.observe(_closed(step, (0.9, 0.95, 1.0)))
    assert policy.best_quorum(3) == 3
    assert _first_poll(policy, 4, 2, 0.95) is None
    assert policy.decisions == []


def test_adaptive_observing_ignores_polls():
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=1)
    policy.observe(_closed(1, (0.1, 0.2, 0.3)))
    # Polled steps 2 and 3 would add a step closing at 5 s.
    _poll(policy, 2, 1, 0.1, 0.0)
    _poll(policy, 3, 0, 5.0, 5.0)
    assert policy.expected_times() == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})


# -- the watchdog feeds the policy from the PS log --------------------------

class _FakeProtocol:
    """What the watchdog reads of the protocol PS, as plain Python."""
    total_num_replicas = replicas_to_aggregate = 3

    def __init__(self, rows, open_step):
        self.rows, self.open = rows, open_step
        self.log_reads, self.lowered = 0, []

    def num_waiting(self):
        return 0

    def read_log(self, start):
        self.log_reads += 1
        return self.rows[start:], len(self.rows), 0

    def open_step(self):
        self.open_reads = getattr(self, "open_reads", 0) + 1
        return self.open

    def lower_quorum(self, step, q):
        self.lowered.append((step, q))

    def close_if_closable(self):
        pass


def _fake_coordinator(pending):
    queue = types.SimpleNamespace(
        _tagged_queue={}, _queue=types.SimpleNamespace(qsize=lambda: 0),
        _inflight_closure_count=pending)
    return types.SimpleNamespace(_cluster=types.SimpleNamespace(
        closure_queue=queue))


def _log_rows(base, steps):
    """Steps 1..steps-1 close with 3, the third gradient 1 s after the
    first two; step 0 closes at `base`."""
    rows = [(0, 0, 0, 0.0, 0.0, base, steplog.ADMITTED_CLOSED, 3, 3)]
    for step in range(1, steps):
        opened = base + 1.1 * (step - 1)
        rows += [(step, step, 0, 0.0, 0.0, opened + 0.01, steplog.ADMITTED,
                  1, 3),
                 (step, step, 1, 0.0, 0.0, opened + 0.012, steplog.ADMITTED,
                  2, 3),
                 (step, step, 2, 0.0, 0.0, opened + 1.1,
                  steplog.ADMITTED_CLOSED, 3, 3)]
    return rows


def test_watchdog_feeds_the_log_and_decides_on_a_steps_first_poll():
    from ps_sync import watchdog
    # Steps 1-5 closed between two polls; step 6 opened just now and
    # already has 2 gradients.
    rows = _log_rows(time.time() - 5 * 1.1, 6)
    protocol = _FakeProtocol(rows, (6, 2, (0, 1)))
    policy = quorum.AdaptiveQuorum(min_replicas_to_aggregate=2,
                                   warmup_steps=3, explore_every=100)
    dog = watchdog.StepWatchdog(protocol, _fake_coordinator(3), policy)
    dog._tick()  # pylint: disable=protected-access
    # Steps 1-4 are final (step 5 is final once step 6 closes).
    assert policy.expected_times() == pytest.approx(
        {1: 0.01, 2: 0.012, 3: 1.1}, abs=1e-6)
    assert protocol.lowered == [(6, 2)]
    assert list(dog.degraded_steps) == [(6, 2)]
    assert dog.degraded_count == 1


def test_watchdog_releases_once_a_finished_closure_leaves_only_waiters():
    from ps_sync import watchdog
    released = threading.Event()

    class Protocol(_FakeProtocol):
        def num_waiting(self):
            return 2

        def release_waiters(self):
            released.set()
            return 2

    coordinator = _fake_coordinator(3)
    queue = coordinator._cluster.closure_queue

    def mark_finished():
        queue._inflight_closure_count -= 1
    queue.mark_finished = mark_finished
    # Polls an hour apart: only a finished closure can bring the release.
    dog = watchdog.StepWatchdog(Protocol([], (0, 2, (0, 1))), coordinator,
                                interval_s=3600).start()
    try:
        assert not released.wait(0.2)  # 3 pending, 2 of them waiters
        queue.mark_finished()  # the two left are both waiters
        assert released.wait(60)
    finally:
        dog.stop()
        dog._thread.join(60)  # pylint: disable=protected-access
    assert dog.releases == 1
    assert queue._inflight_closure_count == 2  # the hook kept the original


def test_watchdog_keeps_the_latest_degraded_steps_and_counts_all(
        monkeypatch):
    from ps_sync import watchdog
    monkeypatch.setattr(watchdog, "DEGRADED_KEPT", 3)
    protocol = _FakeProtocol([], (0, 2, (0, 1)))
    dog = watchdog.StepWatchdog(protocol, _fake_coordinator(3),
                                quorum.TimeoutThenDegrade(2, 1e-4))
    for step in range(5):
        protocol.open = (step, 2, (0, 1))
        # The first poll of a step sees its first gradient, the next one
        # finds it waited past the timeout.
        for _ in range(2):
            dog._tick()  # pylint: disable=protected-access
            time.sleep(0.01)
    assert protocol.lowered == [(step, 2) for step in range(5)]
    assert list(dog.degraded_steps) == [(2, 2), (3, 2), (4, 2)]
    assert dog.degraded_count == 5


def test_watchdog_reads_no_log_for_policies_that_do_not_learn():
    from ps_sync import watchdog
    protocol = _FakeProtocol(_log_rows(0.0, 3), (3, 2, (0, 1)))
    for policy in (quorum.FixedQuorum(), quorum.TimeoutThenDegrade(2, 1.0)):
        watchdog.StepWatchdog(protocol, _fake_coordinator(3),
                              policy)._tick()  # pylint: disable=protected-access
    assert protocol.log_reads == 0
    assert protocol.lowered == []


def test_fixed_quorum_watchdog_reads_the_ps_only_when_it_needs_to():
    """Under the fixed quorum the PS state serves only stall warnings (and
    max_wait_s): read at most once a tenth of the warning time, capped at a
    second, and not at all while nothing is scheduled."""
    from ps_sync import watchdog
    coordinator = _fake_coordinator(0)
    protocol = _FakeProtocol([], (4, 1, (0,)))
    dog = watchdog.StepWatchdog(protocol, coordinator, stall_warning_s=0.5)
    for _ in range(5):
        dog._tick()  # pylint: disable=protected-access
    assert dog.state_reads == 0 and not hasattr(protocol, "open_reads")
    coordinator._cluster.closure_queue._inflight_closure_count = 3
    for _ in range(5):
        dog._tick()  # pylint: disable=protected-access
    assert dog.state_reads == protocol.open_reads == 1
    # A step stuck past the warning time is still warned about.
    time.sleep(0.6)
    dog._tick()  # pylint: disable=protected-access
    assert dog.state_reads == 2 and dog.stall_warnings == 1
    # Other policies decide at every poll.
    dog = watchdog.StepWatchdog(protocol, coordinator,
                                quorum.TimeoutThenDegrade(2, 600.0))
    for _ in range(5):
        dog._tick()  # pylint: disable=protected-access
    assert dog.state_reads == 5
