"""Workers killed at random moments, on real processes (issue 6, items 1, 2
and 6): a LocalCluster of server processes, the coordinator in a fresh
interpreter, the probe model decoding every applied update.

The moments are random: the seed is printed in every assertion message and
PS_SYNC_FAULT_SEED=<seed> replays it.
"""
import os
import random

import pytest

from ps_sync.testing import fresh_interpreter

HERE = __name__


def _seed():
    env = os.environ.get("PS_SYNC_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 30)


def run_body(target, tmp_path):
    """Run `module:function(run_dir, seed)` in a fresh interpreter with a
    random seed; returns (result, message naming the seed)."""
    seed = _seed()
    r = fresh_interpreter.run(target, dict(run_dir=str(tmp_path), seed=seed),
                              timeout=360)
    return r, "PS_SYNC_FAULT_SEED=%d" % seed


class _ProbeRun:
    """Probe model, SyncReplicasWithBackups and a coordinator over a real
    multi-process cluster (in the child interpreter)."""

    def __init__(self, run_dir, workers, replicas, quorum_policy=None,
                 delay_s=0.01, num_ps=1, **cluster_kwargs):
        from ps_sync.local_cluster import LocalCluster
        self.cluster = LocalCluster(num_workers=workers, num_ps=num_ps,
                                    run_dir=run_dir, echo=False,
                                    **cluster_kwargs)
        self.cluster.start()
        os.environ.update(self.cluster.coordinator_env())
        import tensorflow as tf
        from ps_sync.optimizer import SyncReplicasWithBackups
        from tests import probe
        self.tf, self.probe = tf, probe
        self.replicas = replicas
        self.strategy = tf.distribute.experimental.ParameterServerStrategy(
            self.cluster.cluster_resolver())
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(
            self.strategy)
        with self.strategy.scope():
            self.model = probe.ProbeModel(workers, max_steps=1024)
            self.model.build([None, 1])
            self.opt = SyncReplicasWithBackups(
                tf.keras.optimizers.SGD(probe.LR), replicas, workers,
                quorum_policy=quorum_policy,
                telemetry_dir=os.path.join(run_dir, "telemetry"))
        # A small delay per step, so that a kill lands inside steps.
        dataset = self.coordinator.create_per_worker_dataset(
            probe.delayed_dataset_fn([delay_s] * workers, workers))
        self.iterator = iter(dataset)
        self.step_fn = probe.train_step_fn(self.strategy, self.model,
                                           self.opt)

    def run(self, closures):
        for _ in range(closures):
            self.coordinator.schedule(self.step_fn, args=(self.iterator,))
        self.coordinator.join()

    def iterations(self):
        return int(self.opt.iterations.numpy())

    def pushes(self):
        """Pushes that reached the protocol PS so far (every outcome)."""
        return sum(sum(v for k, v in w.items() if not k.startswith("wait_"))
                   for w in self.opt.sync_stats()["per_worker"])

    def feed_until(self, done, timeout_s, backlog=8):
        """Keep about `backlog` closures scheduled beyond the pushes that
        arrived, until `done()` or `timeout_s`, without joining (a closure
        may be stuck on a lost worker). A fixed batch of closures can run
        dry while a worker is away, which would look like a stall."""
        import time
        deadline = time.monotonic() + timeout_s
        scheduled = self.pushes()
        while not done() and time.monotonic() < deadline:
            while scheduled - self.pushes() < backlog:
                self.coordinator.schedule(self.step_fn, args=(self.iterator,))
                scheduled += 1
            time.sleep(0.05)

    def until_admitted(self, worker, since, timeout_s=150):
        """Run closures until `worker` has a gradient admitted after
        `since` to a step that was applied; returns that push record (None
        after `timeout_s`)."""
        import time
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.run(12)
            pushes, steps = self.records()
            applied = {s["step"]: s["admitted"] for s in steps}
            found = next((p for p in pushes if p["worker"] == worker
                          and p["arrived_at"] > since
                          and p["outcome"].startswith("admitted")
                          and worker in applied.get(p["step"], ())), None)
            if found is not None:
                return found
        return None

    def records(self):
        self.opt.telemetry.drain()
        return list(self.opt.telemetry.pushes), list(self.opt.telemetry.steps)

    def finish(self):
        """Decoded rows and telemetry, checked against each other."""
        steps, rows = self.probe.decode_any_quorum(self.model)
        protocol = self.opt.protocol
        result = {"steps": steps, "rows": rows,
                  "iterations": self.iterations(),
                  "apply_seq": protocol.apply_sequence(),
                  "stats": self.opt.sync_stats()}
        self.opt.close()
        result["pushes"], result["step_records"] = self.records()
        return result


def _kill_worker_then_restart(run_dir, seed):
    import threading
    import time
    rng = random.Random(seed)
    run = _ProbeRun(run_dir, workers=3, replicas=2)
    run.run(12)  # traced and warm
    killed = []

    def kill():
        run.cluster.kill("worker-2")  # returns once the process is gone
        killed.append(time.time())

    killer = threading.Timer(rng.uniform(0.05, 0.5), kill)
    killer.start()
    run.run(60)  # the kill lands somewhere in here
    killer.join()
    kill_time = killed[0]
    down_from = run.iterations()
    run.run(40)  # worker-2 is down for all of these
    down_to = run.iterations()
    restart_time = time.time()
    run.cluster.restart("worker-2")
    rejoined = run.until_admitted(2, since=restart_time)
    result = run.finish()
    result.update(kill_time=kill_time, down_from=down_from, down_to=down_to,
                  restart_time=restart_time, rejoined=rejoined)
    run.cluster.stop()
    return result


def _check_whole_updates(r, replicas, msg):
    """Every applied update is one mean of fresh pushes of distinct workers,
    one per step, as the telemetry recorded it."""
    assert r["steps"] == r["iterations"], msg
    assert r["apply_seq"] % 2 == 0 and r["apply_seq"] == 2 * r["steps"], msg
    records = r["step_records"]
    recorded = [s["step"] for s in records]
    assert recorded == list(range(r["steps"])), (msg, recorded)
    assert [sorted(s["admitted"]) for s in records] == r["rows"], msg
    assert all(len(row) == replicas for row in r["rows"]
               if replicas is not None), msg


@pytest.mark.timeout(400)
def test_killed_worker_is_not_waited_for_and_rejoins_after_restart(tmp_path):
    r, msg = run_body(HERE + ":_kill_worker_then_restart", tmp_path)
    _check_whole_updates(r, 2, msg)
    # While worker-2 was down (40 closures), updates kept being applied, one
    # per 2 pushes of workers 0 and 1, without waiting for it.
    assert r["down_to"] - r["down_from"] >= 15, msg
    # Gradients worker-2 finished before the kill may still be admitted (a
    # step open at the kill, or a whole gradient sent just before it);
    # nothing it computed after the kill arrives.
    mine = [p for p in r["pushes"] if p["worker"] == 2
            and p["arrived_at"] < r["restart_time"]]
    assert all(p["computed_at"] < r["kill_time"] for p in mine), (msg, mine)
    assert len([p for p in mine if p["arrived_at"] > r["kill_time"]]) <= 1, (
        msg, mine)
    before_kill = {p["step"] for p in mine
                   if p["outcome"].startswith("admitted")}
    down = range(r["down_from"], r["down_to"])
    assert all(r["rows"][s] == [0, 1] for s in down
               if s not in before_kill), (msg, [r["rows"][s] for s in down])
    assert len(before_kill.intersection(down)) <= 1, msg
    # Restarted, it rejoined and was admitted to a step that was applied.
    assert r["rejoined"] is not None, msg
    applied = {s["step"]: s for s in r["step_records"]}
    assert 2 in applied[r["rejoined"]["step"]]["admitted"], msg


def _kill_admitted_waiter(run_dir, seed):
    """b = 0 (N = 3 of 3): worker-2 is killed while admitted and waiting for
    its step to close; the next steps cannot reach N and the degrade policy
    closes them with 2."""
    import time
    from ps_sync import quorum
    rng = random.Random(seed)
    run = _ProbeRun(run_dir, workers=3, replicas=3,
                    quorum_policy=quorum.TimeoutThenDegrade(2, 1.0))
    run.run(9)
    # Worker-2 waits for its step whenever it is not the last of the three.
    skip = rng.randrange(4)
    import threading
    done = threading.Event()
    killed = {}

    def kill_when_waiting():
        seen = 0
        was_waiting = False
        while not done.is_set():
            waiting = bool(run.opt.protocol.waiting.numpy()[2])
            if waiting and not was_waiting:
                if seen == skip:
                    run.cluster.kill("worker-2")  # returns once it is gone
                    killed.update(time=time.time(), step=run.iterations())
                    return
                seen += 1
            was_waiting = waiting
            time.sleep(0.002)

    killer = threading.Thread(target=kill_when_waiting)
    killer.start()
    deadline = time.monotonic() + 120
    while not killed and time.monotonic() < deadline:
        run.run(6)
    done.set()
    killer.join()
    assert killed, "worker-2 was never seen waiting"
    run.run(16)  # steps without worker-2: each closes degraded with 2
    result = run.finish()
    result["killed"] = killed
    run.cluster.stop()
    return result


@pytest.mark.timeout(400)
def test_worker_killed_while_admitted_leaves_no_half_update(tmp_path):
    r, msg = run_body(HERE + ":_kill_admitted_waiter", tmp_path)
    _check_whole_updates(r, None, msg)
    rows = r["rows"]
    msg += " rows=%s killed=%s" % (rows, r["killed"])
    # Every gradient worker-2 had admitted (the last one while it waited)
    # is in the update of its step, which closed whole: nothing lost,
    # nothing half-applied.
    mine = [p for p in r["pushes"] if p["worker"] == 2
            and p["outcome"].startswith("admitted")]
    assert mine and all(2 in rows[p["step"]] for p in mine), msg
    assert all(p["arrived_at"] < r["killed"]["time"] for p in mine), msg
    last = max(p["step"] for p in mine)
    # Later steps cannot reach N = 3; the policy closed them with 2, logged.
    later = rows[last + 1:]
    assert len(later) >= 4, msg
    assert all(row == [0, 1] for row in later), msg
    records = r["step_records"][last + 1:]
    assert all(s["degraded"] and s["quorum"] == 2 for s in records), msg
    degraded = [step for step, _ in r["stats"]["degraded_steps"]]
    assert degraded[-len(records):] == [s["step"] for s in records], msg


def _kill_more_than_b(run_dir, seed):
    """N = 2 of 3 with a fail policy: two workers die, the quorum can never
    be reached, and the run stops with an error naming them."""
    import time
    from ps_sync import quorum
    rng = random.Random(seed)
    run = _ProbeRun(run_dir, workers=3, replicas=2,
                    quorum_policy=quorum.TimeoutThenFail(2.0))
    run.run(9)
    time.sleep(rng.uniform(0, 0.05))
    run.cluster.kill("worker-1")
    run.cluster.kill("worker-2")
    start = time.monotonic()
    try:
        run.run(20)
        error = None
    except Exception as e:  # pylint: disable=broad-except
        error = "%s: %s" % (type(e).__name__, e)
    waited = time.monotonic() - start
    steps, rows = run.probe.decode_any_quorum(run.model)
    run.cluster.stop()
    return {"error": error, "waited_s": waited, "steps": steps, "rows": rows}


@pytest.mark.timeout(400)
def test_more_than_b_workers_gone_fails_naming_them(tmp_path):
    r, msg = run_body(HERE + ":_kill_more_than_b", tmp_path)
    assert r["error"] is not None, msg
    assert "quorum_timeout_s=2" in r["error"], (msg, r["error"])
    assert ("workers that have not contributed: worker-1, worker-2"
            in r["error"]), (msg, r["error"])
    # No update with fewer than N was applied on the way.
    assert all(len(row) == 2 for row in r["rows"]), msg


def _pause_workers_randomly(run_dir, seed):
    """Workers stopped (SIGSTOP) and resumed at random moments: a worker
    stopped between registering as a waiter and dequeuing its wake-up token
    must still get that token, not another worker."""
    import threading
    import time
    import logging
    import re
    rng = random.Random(seed)
    run = _ProbeRun(run_dir, workers=3, replicas=2)
    run.run(9)
    stop = threading.Event()
    pauses = []
    # Under heavy load the coordinator may take a paused worker for a failed
    # one (gRPC "ping timeout") and re-run its closure: its interrupted wait
    # is the dead-waiter case, not what this test is about.
    failed = set()

    class FailedWorkers(logging.Handler):
        def emit(self, record):
            found = re.search(r"Worker /job:worker/replica:0/task:(\d+) "
                              r"failed", record.getMessage())
            if found:
                failed.add(int(found.group(1)))

    logging.getLogger("tensorflow").addHandler(FailedWorkers())

    def pause_some():
        while not stop.wait(rng.uniform(0.02, 0.2)):
            name = "worker-%d" % rng.randrange(3)
            run.cluster.pause(name)
            time.sleep(rng.uniform(0.02, 0.2))
            run.cluster.resume(name)
            pauses.append(name)

    pauser = threading.Thread(target=pause_some)
    pauser.start()
    deadline = time.monotonic() + 200
    while len(pauses) < 20 and time.monotonic() < deadline:
        run.run(30)
    stop.set()
    pauser.join()
    result = run.finish()
    result.update(pauses=len(pauses), failed_workers=sorted(failed))
    run.cluster.stop()
    return result


def _coordinator_calls_with_a_worker_stopped(run_dir, seed):
    """The coordinator's calls on the protocol PS, and a checkpoint save,
    while a worker is SIGSTOPped. A function first traced then is registered
    on every task, the stopped one too, synchronously and holding the GIL:
    every thread of the coordinator stood still (80 s here before the fix;
    for good when the thread that was to resume the worker was one of
    them). TensorFlow's saver traced a new function at every save (60.8 s
    frozen). Two parameter servers: the save spans tasks. A heartbeat
    thread records the longest time it could not run."""
    import threading
    import time
    from ps_sync import checkpointing
    del seed
    run = _ProbeRun(run_dir, workers=3, replicas=2, num_ps=2)
    # The probe's variables are spread over both parameter servers.
    assert len({v.device for v in run.model.trainable_variables}) == 2
    run.run(6)
    before = run.iterations()
    protocol = run.opt.protocol
    checkpointer = checkpointing.UpdateCheckpointer(
        run.tf.train.Checkpoint(model=run.model, optimizer=run.opt),
        os.path.join(run_dir, "checkpoints"), run.opt, 0)
    checkpointer.save()  # a first save, while every worker runs
    stop, gaps = threading.Event(), [0.0]

    def heartbeat():
        last = time.monotonic()
        while not stop.wait(0.01):
            now = time.monotonic()
            gaps[0] = max(gaps[0], now - last)
            last = now

    beat = threading.Thread(target=heartbeat)
    run.cluster.pause("worker-2")
    beat.start()
    released = protocol.release_waiters()
    protocol.lower_quorum(-5, 1)  # a step that never opens: no effect
    protocol.set_hold_every(0)
    protocol.set_hold(False)
    closed = protocol.close_if_closable()
    saved = checkpointer.save()
    stop.set()
    beat.join()
    run.cluster.resume("worker-2")
    restored = checkpointer.restore_latest()
    run.run(6)
    after = run.iterations()
    protocol.fail("ps_sync test: failed on purpose")
    failed = int(protocol.failed.numpy())
    run.cluster.stop()
    return {"released": released, "closed": closed, "before": before,
            "after": after, "failed": failed, "longest_gap_s": gaps[0],
            "saved": saved, "restored": restored}


@pytest.mark.timeout(200)
def test_coordinator_calls_do_not_freeze_while_a_worker_is_stopped(tmp_path):
    r = fresh_interpreter.run(HERE + ":_coordinator_calls_with_a_worker_"
                              "stopped", dict(run_dir=str(tmp_path), seed=0),
                              timeout=150)
    # Not a timing goal: a frozen coordinator stands still for as long as
    # the worker is stopped (80 s, or for good); a loaded machine
    # deschedules a thread for well under a second.
    assert r["longest_gap_s"] < 20, r
    assert r["released"] >= 0 and r["closed"] >= 0
    # The save under the stop is whole: it restores, at the step it saved.
    assert r["saved"].endswith("ckpt-%d" % r["before"]), r
    assert r["restored"] == r["before"], r
    assert r["after"] > r["before"], r  # it trained on after the resume
    assert r["failed"] == 1


@pytest.mark.timeout(400)
def test_paused_waiters_keep_their_wake_up_tokens(tmp_path):
    r, msg = run_body(HERE + ":_pause_workers_randomly", tmp_path)
    msg += " stats=%s failed=%s" % (r["stats"], r["failed_workers"])
    _check_whole_updates(r, 2, msg)
    assert r["pauses"] >= 20, msg
    per_worker = r["stats"]["per_worker"]
    kept = [w for i, w in enumerate(per_worker)
            if i not in r["failed_workers"]]
    assert kept, msg
    for w in kept:
        # Every wait (after an admission or a duplicate) ended exactly once.
        assert (w["admitted"] + w["dropped_duplicate"]
                == w["wait_closed"] + w["wait_released"]), msg
        # A worker pushes a duplicate only after being woken before its step
        # closed: by a release (end of a schedule), never by a token that
        # was meant for another worker.
        assert w["dropped_duplicate"] <= w["wait_released"], msg
    assert r["steps"] >= 40, msg
