"""The synchronous-replicas protocol state and its per-push logic.

All state lives on one parameter server (the "protocol PS"), except the
gradient sums, which sit next to the variables they belong to. A push runs
inside one `tf.CriticalSection` on the protocol PS, so admission, accumulation
and the apply of a full step are one atomic unit for every variable on every
shard (invariants 2, 3 and 4 of DESIGN.md).

Versions. `published` is written only after an apply has finished writing
every variable. A worker's tag for its next gradient is the `published` it
read at the end of its previous push, i.e. before any read of its next
forward pass. At push time, inside the critical section, the gradient is
fresh iff tag == current step: if any apply had started after the tag was
read, the step would be larger. A gradient computed on a mix of versions
therefore always carries a stale tag (invariant 1).

Nothing here blocks without bound: the only wait is a polling loop with a
deadline, which the coordinator-side step watchdog (`watchdog.py`) can also
end early: when no remaining closure can complete the open step, when its
quorum policy lowers the quorum, or when it fails the run.
"""
import uuid

import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

# Push outcomes (telemetry records and per-worker counters).
DROPPED_STALE = 0      # computed on an older version
DROPPED_DUPLICATE = 1  # this worker already contributed to the open step
ADMITTED = 2           # counted in the open step, which stays open
ADMITTED_CLOSED = 3    # counted, and completed the quorum: step applied
DROPPED_LATE = 4       # fresh, but the step's quorum was already full (only
                       # while a checkpoint holds the step open)
POLICY_CLOSED = 5      # not a push outcome: a step closed by a push that did
                       # not count in it, or by a waiter (degraded or held)
OUTCOME_NAMES = ("dropped_stale", "dropped_duplicate", "admitted",
                 "admitted_closed", "dropped_late", "policy_closed")
NUM_PUSH_OUTCOMES = 5

# Ways a wait for the step to close can end.
WAIT_CLOSED = 0      # the step was applied
WAIT_RELEASED = 1    # the watchdog saw no closure left that could close it
WAIT_DEADLINE = 2    # max_wait_s passed
WAIT_CLOSABLE = 3    # the quorum is there but nobody closed the step (the
                     # policy lowered it, or a checkpoint hold ended): the
                     # waiter closes it in a second pass
WAIT_FAILED = 4      # the policy failed the run
WAIT_NAMES = ("closed", "released", "deadline", "closable", "failed")

# Telemetry ring buffer columns, one row per push (and per policy close).
LOG_FIELDS = ("step", "tag", "worker", "ready_at", "computed_at",
              "arrived_at", "outcome", "admitted_rank", "quorum")
LOG_CAPACITY = 8192


def _sleep(seconds):
    """An in-graph sleep: TensorFlow has none outside tf.data."""
    micros = tf.cast(seconds * 1e6, tf.int64)
    ds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    ds = ds.apply(tf_data_testing.sleep(micros))
    return ds.get_single_element()


def _f64(x):
    return tf.cast(x, tf.float64)


class SyncProtocol(tf.Module):
    """Protocol state on the parameter servers and the graph of one push.

    Created on the coordinator (under the strategy's scope, outside any
    `tf.function`); `push` is called inside the worker's step function.
    """

    def __init__(self, var_list, replicas_to_aggregate, total_num_replicas,
                 poll_interval_s=0.002, max_wait_s=600.0, run_id=None,
                 initial_step=-1):
        super().__init__(name="ps_sync_protocol")
        if not 1 <= replicas_to_aggregate <= total_num_replicas:
            raise ValueError(
                "replicas_to_aggregate must be between 1 and "
                "total_num_replicas (%d), got %d"
                % (total_num_replicas, replicas_to_aggregate))
        self.replicas_to_aggregate = int(replicas_to_aggregate)
        self.total_num_replicas = int(total_num_replicas)
        self.poll_interval_s = float(poll_interval_s)
        self.max_wait_s = float(max_wait_s)
        # Names every shared PS resource of this coordinator run, so closures
        # of an earlier run can never meet the state of this one.
        self.run_id = run_id or uuid.uuid4().hex[:12]
        n = self.total_num_replicas
        strategy = tf.distribute.get_strategy()

        def var(value, name):
            return tf.Variable(
                value, trainable=False, name=name,
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.NONE)

        with tf.init_scope():
            # Tags start at the current step, so that the first gradient of
            # each worker counts: nothing can move the step before the first
            # push (a restore afterwards is caught by the realignment).
            initial_step = tf.constant(int(initial_step), tf.int64)
            self.published = var(initial_step, "published")
            with strategy.extended.colocate_vars_with(self.published):
                # A lowered quorum for one step, packed into one int64 so
                # that it is written atomically: step * 2**16 + quorum.
                self.lowered = var(tf.constant(-1, tf.int64), "lowered")
                self.count = var(tf.constant(0, tf.int32), "count")
                self.admitted = var(tf.zeros([n], tf.int32), "admitted")
                self.worker_tag = var(tf.fill([n], initial_step),
                                      "worker_tag")
                self.ready_at = var(tf.zeros([n], tf.float64), "ready_at")
                self.waiting = var(tf.zeros([n], tf.int32), "waiting")
                self.release_gen = var(tf.constant(0, tf.int64),
                                       "release_gen")
                self.failed = var(tf.constant(0, tf.int32), "failed")
                # Set (inside the critical section) while the coordinator
                # writes a checkpoint: steps fill up but do not close.
                self.hold = var(tf.constant(0, tf.int32), "hold")
                self.fail_message = var(tf.constant(""), "fail_message")
                self.outcomes = var(tf.zeros([n, NUM_PUSH_OUTCOMES], tf.int64),
                                    "outcomes")
                self.wait_ends = var(tf.zeros([n, len(WAIT_NAMES)], tf.int64),
                                     "wait_ends")
                self.log = var(tf.zeros([LOG_CAPACITY, len(LOG_FIELDS)],
                                        tf.float64), "log")
                self.log_next = var(tf.constant(0, tf.int64), "log_next")
                # Odd while an update is being applied (a seqlock), so the
                # coordinator can tell whether a checkpoint read a torn state.
                self.apply_seq = var(tf.constant(0, tf.int64), "apply_seq")
            self.accumulators = []
            for v in var_list:
                with strategy.extended.colocate_vars_with(v):
                    self.accumulators.append(
                        var(tf.zeros(v.shape, v.dtype),
                            "acc_" + v.name.split(":")[0].replace("/", "_")))
        self._device = self.published.device
        self._set_hold_fn = None

    # -- graph pieces, all traced inside the worker function ---------------

    def _critical_section(self, after, purpose):
        # The mutex is created behind the gradients: otherwise the lock could
        # be taken before the forward pass and serialise every worker.
        with tf.control_dependencies(after), tf.device(self._device):
            return tf.CriticalSection(
                shared_name="ps_sync_%s_step" % self.run_id,
                name="ps_sync_" + purpose)

    def _record(self, fields):
        """Append one telemetry row (inside the critical section)."""
        row = tf.stack([_f64(fields[name]) for name in LOG_FIELDS])
        index = self.log_next.assign_add(1, read_value=True) - 1
        written = self.log.scatter_nd_update([[index % LOG_CAPACITY]], [row])
        with tf.control_dependencies([written]):
            return tf.constant(True)

    def _realign(self, step):
        """Open `step` if the state belongs to another one (first push, or a
        checkpoint restore moved the step)."""
        def reset():
            ops = [acc.assign(tf.zeros_like(acc)) for acc in self.accumulators]
            with tf.control_dependencies(ops):
                ops = [self.count.assign(0),
                       self.admitted.assign(tf.zeros_like(self.admitted))]
            with tf.control_dependencies(ops):
                return self.published.assign(step, read_value=True)
        return tf.cond(tf.not_equal(self.published, step), reset,
                       lambda: self.published.read_value())

    def _quorum(self, step):
        lowered = self.lowered.read_value()
        return tf.where(tf.equal(lowered // 2**16, step),
                        tf.cast(lowered % 2**16, tf.int32),
                        self.replicas_to_aggregate)

    def _closable(self, step):
        count = self.count.read_value()
        return tf.logical_and(
            tf.logical_and(count > 0, count >= self._quorum(step)),
            tf.equal(self.hold.read_value(), 0))

    def _accumulate(self, grads):
        ops = []
        for acc, g in zip(self.accumulators, grads):
            if isinstance(g, tf.IndexedSlices):
                ops.append(acc.scatter_add(g))
            else:
                ops.append(acc.assign_add(g, read_value=False))
        return ops

    def _close(self, step_var, apply_fn):
        """Apply the mean of the accumulated gradients and open the next step.
        Returns the quorum the step closed with."""
        begin = self.apply_seq.assign_add(1, read_value=True)
        with tf.control_dependencies([begin]):
            count = self.count.read_value()
            means = [acc.read_value() / tf.cast(count, acc.dtype)
                     for acc in self.accumulators]
        applied = apply_fn(means)
        with tf.control_dependencies(tf.nest.flatten(applied)):
            new_step = tf.cast(step_var.read_value(), tf.int64)
        with tf.control_dependencies([new_step]):
            resets = [acc.assign(tf.zeros_like(acc))
                      for acc in self.accumulators]
            resets += [self.count.assign(0),
                       self.admitted.assign(tf.zeros_like(self.admitted))]
        # Written last: a tag equal to it promises a complete version.
        with tf.control_dependencies(resets):
            published = self.published.assign(new_step, read_value=True)
        with tf.control_dependencies([published]):
            end = self.apply_seq.assign_add(1, read_value=True)
        with tf.control_dependencies([end]):
            return tf.identity(count)

    def _admit_and_maybe_apply(self, worker, tag, ready_at, computed_at,
                               grads, step_var, apply_fn, contribute):
        """Body of the push's critical section: (outcome, open step, failed).

        The step closes here, and only here, once its admitted count reaches
        the quorum: normally on the N-th admitted push; after the policy
        lowered the quorum, on the next push or on a waiter's second pass
        (`contribute` false: no gradient, not counted as a push).
        """
        arrived_at = tf.timestamp()
        step = self._realign(tf.cast(step_var.read_value(), tf.int64))
        fresh = tf.logical_and(contribute, tf.equal(tag, step))
        duplicate = tf.equal(self.admitted[worker], 1)
        full = self.count >= self._quorum(step)

        def admit():
            with tf.control_dependencies(self._accumulate(grads)):
                rank = self.count.assign_add(1, read_value=True)
                mark = self.admitted.scatter_nd_update([[worker]], [1])
            with tf.control_dependencies([mark]):
                return tf.constant(ADMITTED), tf.identity(rank)

        def drop(outcome):
            return lambda: (tf.constant(outcome), tf.constant(0))

        outcome, rank = tf.case(
            [(tf.logical_not(fresh), drop(DROPPED_STALE)),
             (duplicate, drop(DROPPED_DUPLICATE)),
             (full, drop(DROPPED_LATE))],
            default=admit, exclusive=False)
        with tf.control_dependencies([outcome, rank]):
            quorum = self._quorum(step)
            closable = self._closable(step)
        closed = tf.cond(closable, lambda: self._close(step_var, apply_fn),
                         lambda: tf.constant(0))
        admitted = tf.equal(outcome, ADMITTED)
        outcome = tf.where(tf.logical_and(admitted, closed > 0),
                           ADMITTED_CLOSED, outcome)
        counted = self.outcomes.scatter_nd_add(
            [[worker, outcome]], [tf.cast(contribute, tf.int64)])
        logged = [tf.cond(contribute, lambda: self._record(dict(
            step=step, tag=tag, worker=worker, ready_at=ready_at,
            computed_at=computed_at, arrived_at=arrived_at, outcome=outcome,
            admitted_rank=rank, quorum=quorum)), lambda: tf.constant(False))]
        logged.append(tf.cond(
            tf.logical_and(closed > 0, tf.logical_not(admitted)),
            lambda: self._record(dict(
                step=step, tag=step, worker=worker, ready_at=0.0,
                computed_at=0.0, arrived_at=arrived_at, outcome=POLICY_CLOSED,
                admitted_rank=closed, quorum=quorum)),
            lambda: tf.constant(False)))
        with tf.control_dependencies([counted] + logged):
            return (tf.identity(outcome), self.published.read_value(),
                    self.failed.read_value())

    def _wait_for_close(self, worker, step):
        """Poll until the step after `step` is published, or the watchdog
        intervenes, or the deadline passes. Returns how the wait ended."""
        release = self.release_gen.read_value()
        deadline = tf.timestamp() + self.max_wait_s
        with tf.control_dependencies([release]):
            mark = self.waiting.scatter_nd_update([[worker]], [1])

        def body(ended):
            del ended
            with tf.control_dependencies([_sleep(self.poll_interval_s)]):
                closed = self.published.read_value() > step
                released = self.release_gen.read_value() > release
                # Even apply_seq: no close in flight (a closer shows the
                # full count until it resets it).
                closable = tf.logical_and(
                    tf.equal(self.apply_seq.read_value() % 2, 0),
                    self._closable(step))
                failed = self.failed.read_value() > 0
                late = tf.timestamp() > deadline
            ended = -1
            for flag, reason in ((late, WAIT_DEADLINE),
                                 (released, WAIT_RELEASED),
                                 (closable, WAIT_CLOSABLE),
                                 (failed, WAIT_FAILED),
                                 (closed, WAIT_CLOSED)):
                ended = tf.where(flag, reason, ended)
            return (ended,)

        with tf.control_dependencies([mark]):
            ended, = tf.while_loop(lambda ended: tf.equal(ended, -1), body,
                                   [tf.constant(-1)])
        # Explicit: the unmark touches no resource the loop reads, so
        # automatic control dependencies would let it run before the loop.
        with tf.control_dependencies([ended]):
            unmark = self.waiting.scatter_nd_update([[worker]], [0])
        count = self.wait_ends.scatter_nd_add([[worker, ended]],
                                              tf.constant([1], tf.int64))
        with tf.control_dependencies([unmark, count]):
            return tf.identity(ended)

    def push(self, worker, grads, step_var, apply_fn):
        """One worker's push of `grads` (aligned with the var_list).

        `step_var` is the global step (the wrapped optimizer's iterations);
        `apply_fn(mean_grads)` applies one update and advances it. Returns the
        push outcome; raises (in-graph) if the quorum policy failed the run.
        """
        computed_at = tf.timestamp()
        worker = tf.cast(worker, tf.int32)
        with tf.device(self._device):
            tag = self.worker_tag[worker]
            ready_at = self.ready_at[worker]
        deps = [g.values if isinstance(g, tf.IndexedSlices) else g
                for g in grads] + [tag, ready_at]
        cs = self._critical_section(deps, "push")

        def one_pass(mode, first_outcome, first_wait, failed):
            """Pass 0 pushes the gradient and, if admitted without closing
            the step, waits for it to close. Pass 1 runs only when the policy
            lowered the quorum or a checkpoint hold ended during that wait:
            the waiter closes the step
            itself instead of spending a gradient computation on it."""
            contribute = tf.equal(mode, 0)
            outcome, step, failed = cs.execute(
                lambda: self._admit_and_maybe_apply(
                    worker, tag, ready_at, computed_at, grads, step_var,
                    apply_fn, contribute),
                exclusive_resource_access=False)
            # An admitted worker that did not close the step would only
            # compute a gradient certain to be dropped: wait for the new
            # version instead.
            waited = tf.cond(
                tf.logical_and(contribute, tf.equal(outcome, ADMITTED)),
                lambda: self._wait_for_close(worker, step),
                lambda: tf.constant(-1))
            next_mode = tf.where(tf.equal(waited, WAIT_CLOSABLE), 1, 2)
            return (next_mode, tf.where(contribute, outcome, first_outcome),
                    tf.where(contribute, waited, first_wait), failed)

        _, outcome, waited, failed = tf.while_loop(
            lambda mode, *_: mode < 2, one_pass,
            [tf.constant(0), tf.constant(-1), tf.constant(-1),
             tf.constant(0)])
        with tf.control_dependencies([waited]), tf.device(self._device):
            ok = tf.logical_and(tf.equal(failed, 0),
                                tf.not_equal(waited, WAIT_FAILED))
            check = tf.debugging.Assert(ok, [self.fail_message.read_value()],
                                        name="ps_sync_quorum_failed")
            next_tag = self.published.read_value()
            retag = self.worker_tag.scatter_nd_update([[worker]], [next_tag])
            stamp = self.ready_at.scatter_nd_update([[worker]],
                                                    [tf.timestamp()])
        with tf.control_dependencies([retag, stamp, check]):
            return tf.identity(outcome)

    # -- coordinator side ---------------------------------------------------

    def release_waiters(self):
        """Let every waiting worker return (used by the watchdog)."""
        self.release_gen.assign_add(1)

    def lower_quorum(self, step, quorum):
        """Lower the quorum of open step `step`; no effect on any other
        step, so a lowering that races with the step's close is harmless."""
        quorum = max(1, min(int(quorum), self.replicas_to_aggregate))
        self.lowered.assign(int(step) * 2**16 + quorum)

    def set_hold(self, on):
        """Hold (or let go) every step close. Runs inside the critical
        section, so once it returns no update is being applied."""
        if self._set_hold_fn is None:
            @tf.function
            def set_hold_fn(value):
                cs = self._critical_section([value], "hold")
                return cs.execute(lambda: self.hold.assign(value,
                                                           read_value=True),
                                  exclusive_resource_access=False)
            self._set_hold_fn = set_hold_fn
        self._set_hold_fn(tf.constant(1 if on else 0, tf.int32))

    def fail(self, message):
        self.fail_message.assign(message)
        self.failed.assign(1)

    def open_step(self):
        """(step, count, admitted workers) of the open step, read eagerly."""
        return (int(self.published.numpy()), int(self.count.numpy()),
                tuple(int(w) for w in tf.where(self.admitted > 0)[:, 0]
                      .numpy()))

    def apply_sequence(self):
        """The apply seqlock counter: odd while an update is applied."""
        return int(self.apply_seq.numpy())

    def num_waiting(self):
        return int(tf.reduce_sum(self.waiting).numpy())

    def read_log(self, start):
        """Telemetry rows from record number `start` on: (rows, next, lost)."""
        end = int(self.log_next.numpy())
        lost = max(0, end - start - LOG_CAPACITY)
        first = start + lost
        if first >= end:
            return [], end, lost
        indices = tf.range(first, end, dtype=tf.int64) % LOG_CAPACITY
        rows = tf.gather(self.log, indices).numpy()
        return rows, end, lost

    def stats(self):
        """Counters so far, as plain Python values."""
        outcomes = self.outcomes.numpy()
        waits = self.wait_ends.numpy()
        per_worker = []
        for w in range(self.total_num_replicas):
            entry = {name: int(outcomes[w, i])
                     for i, name in enumerate(OUTCOME_NAMES[:NUM_PUSH_OUTCOMES])}
            entry.update({"wait_" + name: int(waits[w, i])
                          for i, name in enumerate(WAIT_NAMES)})
            per_worker.append(entry)
        return {"published_step": int(self.published.numpy()),
                "per_worker": per_worker}
