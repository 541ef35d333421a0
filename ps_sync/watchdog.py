"""The coordinator-side step watchdog: frees waiters no closure can free and
runs the quorum policy.

Releases. A worker admitted to an open step waits for it to close. At the end
of an epoch (or of a custom loop's schedule) the closures that could complete
the quorum may never come, and `ClusterCoordinator.join()` would wait on the
waiters forever (hazard 3 of DESIGN.md). Once every pending closure is a
waiter, the watchdog wakes the waiters and they return, leaving the open step
open for later closures; it does the same for any wait longer than
`max_wait_s`. A release never touches the step's state, so a spurious one
only costs efficiency. The check runs at every poll and, near the end of a
schedule, as soon as a closure finishes: waiting for the next poll left the
last workers of every drain idle for up to a poll each.

Quorum policy. The open step's clock runs only while closures are pending (an
idle coordinator is not a slow cluster). Whatever the policy, a step open for
`stall_warning_s` is logged, naming the workers it waits for, and again
every `stall_warning_s`: a fixed quorum with more than b workers gone waits,
but never silently. The policy may lower the step's
quorum (the next push then closes it, a degraded step) or fail the run: the
protocol PS is flagged, so every closure raises, and the coordinator's queue
is failed too, so `join()` raises even when no worker is left to run one.
A policy with `observe` (AdaptiveQuorum) also gets every closed step's exact
arrival times from the PS's telemetry log, which the watchdog then reads at
each poll with its own cursor (steps at fast rates close between two polls),
and the time the open step opened, on the PS clock: the watchdog's clock is
the wall clock, time.time(), the clock of tf.timestamp() (one clock if the
coordinator runs on the PS host; else as synchronised as the hosts).
"""
import collections
import threading
import time

from absl import logging

from ps_sync import quorum as quorum_lib
from ps_sync import steplog

# Degraded steps kept in memory for `sync_stats` (one per degraded step: a
# run degrading every step for weeks would otherwise grow without bound).
DEGRADED_KEPT = 10000


class QuorumTimeoutError(RuntimeError):
    """The quorum policy gave up on a step."""


def _closure_queue(coordinator):
    return getattr(getattr(coordinator, "_cluster", None), "closure_queue",
                   None)


def pending_closures(coordinator):
    """Closures scheduled but not finished, or None if unknown."""
    queue = _closure_queue(coordinator)
    try:
        tagged = sum(q.qsize() for q in list(queue._tagged_queue.values()))
        return queue._queue.qsize() + tagged + queue._inflight_closure_count
    except AttributeError:
        return None


def _on_closure_finished(coordinator, callback):
    """Call `callback()` each time the coordinator's queue marks a closure
    finished (from the thread that ran it). False if this TensorFlow's
    queue cannot be hooked."""
    queue = _closure_queue(coordinator)
    finished = getattr(queue, "mark_finished", None)
    if finished is None:
        return False

    def mark_finished(*args, **kwargs):
        result = finished(*args, **kwargs)
        callback()
        return result
    queue.mark_finished = mark_finished
    return True


def _fail_queue(coordinator, error):
    queue = _closure_queue(coordinator)
    try:
        with queue._queue_lock:
            if queue._error is None:
                queue._error = error
            queue._stop_waiting_condition.notify_all()
    except AttributeError:
        logging.error("ps_sync: cannot fail this ClusterCoordinator's queue; "
                      "closures still raise: %s", error)


def stall_message(open_step):
    missing = [w for w in range(open_step.total_num_replicas)
               if w not in open_step.admitted]
    return ("ps_sync: step %d has waited %.0f s for its quorum: %d of %d "
            "fresh gradients; workers that have not contributed: %s. With "
            "more than %d of them dead, the fixed quorum waits for them to "
            "come back (quorum_policy=TimeoutThenDegrade or TimeoutThenFail "
            "bound the wait)." % (
                open_step.step, open_step.open_for_s, open_step.count,
                open_step.replicas_to_aggregate,
                ", ".join("worker-%d" % w for w in missing) or "none",
                open_step.total_num_replicas
                - open_step.replicas_to_aggregate))


class StepWatchdog:

    def __init__(self, protocol, coordinator, policy=None, interval_s=0.05,
                 max_wait_s=None, stall_warning_s=60.0):
        self._protocol = protocol
        self._coordinator = coordinator
        self._policy = policy or quorum_lib.FixedQuorum()
        self._interval_s = interval_s
        self._max_wait_s = max_wait_s
        self._stop = threading.Event()
        self.releases = 0
        # (step, quorum) of the latest degraded steps (the telemetry files
        # keep them all); the count of all of them.
        self.degraded_steps = collections.deque(maxlen=DEGRADED_KEPT)
        self.degraded_count = 0
        self.failure = None
        self._step = None
        self._open_since = None
        self._first_push_at = None
        self._lowered_step = None
        self._stall_warning_s = stall_warning_s
        # Under the fixed quorum the PS state is read only for stall
        # warnings and max_wait_s: a read a second (or a tenth of either)
        # is enough for those, and each read costs the coordinator an RPC
        # (20 a second took 6% of a core here). Releases at the end of a
        # schedule do not wait for it.
        self._read_every_s = 0.0  # at every poll
        if isinstance(self._policy, quorum_lib.FixedQuorum):
            self._read_every_s = max(interval_s, min(
                1.0, stall_warning_s / 10,
                (max_wait_s or float("inf")) / 10))
        self._read_at = float("-inf")
        self.state_reads = 0
        self._warned_at = None
        self.stall_warnings = 0
        # Only for policies that learn from it: a log read costs PS reads.
        self._arrivals = (steplog.StepArrivals()
                          if hasattr(self._policy, "observe") else None)
        self._log_next = 0
        self._closure_finished = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="ps_sync-step-watchdog")

    def start(self):
        if pending_closures(self._coordinator) is None:
            logging.warning(
                "ps_sync: this TensorFlow's ClusterCoordinator does not expose "
                "its closure queue; waiters at the end of a schedule are not "
                "released and the quorum policy is not applied")
            return self
        _on_closure_finished(self._coordinator, self._closure_finished.set)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._closure_finished.set()

    def _run(self):
        next_poll = time.monotonic() + self._interval_s
        while True:
            finished = self._closure_finished.wait(
                max(0.0, next_poll - time.monotonic()))
            self._closure_finished.clear()
            if self._stop.is_set():
                return
            try:
                if finished and time.monotonic() < next_poll:
                    self._release_if_only_waiters_left(
                        pending_closures(self._coordinator))
                    continue
                next_poll = time.monotonic() + self._interval_s
                self._tick()
            except Exception as e:  # pylint: disable=broad-except
                # The cluster may be going away; every wait stays bounded by
                # max_wait_s regardless.
                logging.log_every_n(logging.WARNING,
                                    "ps_sync watchdog: %s", 100, e)

    def _release_if_only_waiters_left(self, pending):
        """Release the waiters if every pending closure is one. Reads the PS
        only near the end of a schedule (at most N+b closures pending)."""
        if pending is None or pending > self._protocol.total_num_replicas:
            return
        waiting = self._protocol.num_waiting()
        # Re-read: a closure may have been scheduled meanwhile.
        if waiting and pending_closures(self._coordinator) <= waiting:
            self.releases += bool(self._protocol.release_waiters())

    def _tick(self):
        pending = pending_closures(self._coordinator)
        if pending is None:
            return
        self._release_if_only_waiters_left(pending)
        if pending == 0:
            # Nothing scheduled: no step is stalled, nothing to read.
            self._step = None
            return
        now = time.time()
        if now - self._read_at < self._read_every_s:
            return
        self._read_at = now
        self.state_reads += 1
        if (self._max_wait_s is not None
                and self._protocol.oldest_wait_s() > self._max_wait_s):
            logging.warning("ps_sync: releasing waiters after max_wait_s=%g",
                            self._max_wait_s)
            self.releases += bool(self._protocol.release_waiters())
        if self._arrivals is not None:
            # Before the open step: its opening is then in the log.
            self._observe()
        step, count, admitted = self._protocol.open_step()
        if step != self._step:
            self._step, self._open_since = step, now
            self._warned_at = now
            self._first_push_at = None
        if count and self._first_push_at is None:
            self._first_push_at = now
        open_step = quorum_lib.OpenStep(
            step=step, count=count, admitted=admitted,
            open_for_s=now - self._open_since,
            replicas_to_aggregate=self._protocol.replicas_to_aggregate,
            total_num_replicas=self._protocol.total_num_replicas, now=now,
            waiting_for_s=(now - self._first_push_at
                           if self._first_push_at is not None else 0.0),
            opened_at=(self._arrivals.opened_at(step)
                       if self._arrivals is not None else None))
        if now - self._warned_at >= self._stall_warning_s:
            # Never a silent hang, whatever the policy.
            self._warned_at = now
            self.stall_warnings += 1
            logging.warning("%s", stall_message(open_step))
        if isinstance(self._policy, quorum_lib.FixedQuorum):
            return
        decision = self._policy.decide(open_step)
        if decision is None:
            return
        if decision.fail:
            self.failure = decision.fail
            logging.error("%s", decision.fail)
            self._protocol.fail(decision.fail)
            self._protocol.release_waiters()
            _fail_queue(self._coordinator, QuorumTimeoutError(decision.fail))
            self._stop.set()
        elif decision.quorum is not None and self._lowered_step != step:
            self._lowered_step = step
            self._protocol.lower_quorum(step, decision.quorum)
            # Waiters only wait: close it here rather than at the next push.
            self._protocol.close_if_closable()
            self.degraded_steps.append((step, decision.quorum))
            self.degraded_count += 1
            logging.warning(
                "ps_sync: step %d degraded to a quorum of %d after %.1f s "
                "(admitted workers %s)", step, decision.quorum,
                open_step.waiting_for_s, list(admitted))

    def _observe(self):
        """Feed the policy the steps the PS log shows closed since the last
        poll."""
        rows, self._log_next, lost = self._protocol.read_log(self._log_next)
        if lost:
            self._arrivals.reset()
        for row in rows:
            for closed in self._arrivals.add(steplog.push_record(row)):
                self._policy.observe(closed)
