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
deadline, which a coordinator-side watchdog can also cut short (see
`watchdog.py`) when no remaining closure can complete the open step.
"""
import uuid

import tensorflow as tf
from tensorflow.python.data.experimental.ops import testing as tf_data_testing

# Push outcomes, as recorded in telemetry.
DROPPED_STALE = 0      # computed on an older version
DROPPED_DUPLICATE = 1  # this worker already contributed to the open step
ADMITTED = 2           # counted in the open step, which stays open
ADMITTED_CLOSED = 3    # counted, and completed the quorum: step applied
OUTCOME_NAMES = ("dropped_stale", "dropped_duplicate", "admitted",
                 "admitted_closed")

# Ways a wait for the step to close can end.
WAIT_CLOSED = 0
WAIT_RELEASED = 1
WAIT_DEADLINE = 2


def _sleep(seconds):
    """An in-graph sleep: TensorFlow has none outside tf.data."""
    micros = tf.cast(seconds * 1e6, tf.int64)
    ds = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    ds = ds.apply(tf_data_testing.sleep(micros))
    return ds.get_single_element()


class SyncProtocol(tf.Module):
    """Protocol state on the parameter servers and the graph of one push.

    Created on the coordinator (under the strategy's scope, outside any
    `tf.function`); `push` is called inside the worker's step function.
    """

    def __init__(self, var_list, replicas_to_aggregate, total_num_replicas,
                 poll_interval_s=0.002, max_wait_s=600.0, run_id=None):
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
        with tf.init_scope():
            strategy = tf.distribute.get_strategy()
            var = lambda value, name: tf.Variable(  # noqa: E731
                value, trainable=False, name=name,
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.NONE)
            self.published = var(tf.constant(-1, tf.int64), "published")
            with strategy.extended.colocate_vars_with(self.published):
                self.quorum = var(tf.constant(self.replicas_to_aggregate,
                                              tf.int32), "quorum")
                self.count = var(tf.constant(0, tf.int32), "count")
                self.admitted = var(tf.zeros([n], tf.int32), "admitted")
                self.worker_tag = var(tf.fill([n], tf.constant(-1, tf.int64)),
                                      "worker_tag")
                self.waiting = var(tf.zeros([n], tf.int32), "waiting")
                self.release_gen = var(tf.constant(0, tf.int64),
                                       "release_gen")
                # Per worker: pushes by outcome, then waits by ending.
                self.outcomes = var(tf.zeros([n, 4], tf.int64), "outcomes")
                self.wait_ends = var(tf.zeros([n, 3], tf.int64), "wait_ends")
            self.accumulators = []
            for v in var_list:
                with strategy.extended.colocate_vars_with(v):
                    self.accumulators.append(
                        var(tf.zeros(v.shape, v.dtype),
                            "acc_" + v.name.split(":")[0].replace("/", "_")))
        self._device = self.published.device

    # -- graph pieces, all traced inside the worker function ---------------

    def _critical_section(self, after):
        # The mutex is created behind the gradients: otherwise the lock could
        # be taken before the forward pass and serialise every worker.
        with tf.control_dependencies(after), tf.device(self._device):
            return tf.CriticalSection(
                shared_name="ps_sync_%s_push" % self.run_id,
                name="ps_sync_push")

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

    def _accumulate(self, grads):
        ops = []
        for acc, g in zip(self.accumulators, grads):
            if isinstance(g, tf.IndexedSlices):
                ops.append(acc.scatter_add(g))
            else:
                ops.append(acc.assign_add(g, read_value=False))
        return ops

    def _admit_and_maybe_apply(self, worker, tag, grads, step_var, apply_fn):
        """Body of the critical section; returns (outcome, step after)."""
        step = self._realign(tf.cast(step_var.read_value(), tf.int64))
        fresh = tf.equal(tag, step)
        duplicate = tf.equal(self.admitted[worker], 1)

        def admit():
            with tf.control_dependencies(self._accumulate(grads)):
                count = self.count.assign_add(1, read_value=True)
                mark = self.admitted.scatter_nd_update([[worker]], [1])
            with tf.control_dependencies([mark]):
                return tf.cond(count >= self.quorum, close,
                               lambda: tf.constant(ADMITTED))

        def close():
            n = tf.cast(self.count.read_value(), tf.float32)
            means = [tf.cast(acc.read_value() / tf.cast(n, acc.dtype),
                             acc.dtype) for acc in self.accumulators]
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
                published = self.published.assign(new_step)
            with tf.control_dependencies([published]):
                return tf.constant(ADMITTED_CLOSED)

        outcome = tf.case(
            [(tf.logical_not(fresh), lambda: tf.constant(DROPPED_STALE)),
             (duplicate, lambda: tf.constant(DROPPED_DUPLICATE))],
            default=admit, exclusive=False)
        count = self.outcomes.scatter_nd_add([[worker, outcome]],
                                             tf.constant([1], tf.int64))
        with tf.control_dependencies([count]):
            return tf.identity(outcome), self.published.read_value()

    def _wait_for_close(self, worker, step):
        """Poll until the step after `step` is published, a release comes,
        or the deadline passes. Returns how the wait ended."""
        release = self.release_gen.read_value()
        deadline = tf.timestamp() + self.max_wait_s
        with tf.control_dependencies([release]):
            mark = self.waiting.scatter_nd_update([[worker]], [1])

        def cond(ended):
            return tf.equal(ended, -1)

        def body(ended):
            with tf.control_dependencies([_sleep(self.poll_interval_s)]):
                closed = self.published.read_value() > step
                released = self.release_gen.read_value() > release
                late = tf.timestamp() > deadline
            return (tf.where(closed, WAIT_CLOSED,
                             tf.where(released, WAIT_RELEASED,
                                      tf.where(late, WAIT_DEADLINE, -1))),)

        with tf.control_dependencies([mark]):
            ended, = tf.while_loop(cond, body, [tf.constant(-1)])
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
        push outcome.
        """
        worker = tf.cast(worker, tf.int32)
        with tf.device(self._device):
            tag = self.worker_tag[worker]
        deps = [g.values if isinstance(g, tf.IndexedSlices) else g
                for g in grads] + [tag]
        cs = self._critical_section(deps)
        outcome, step = cs.execute(
            lambda: self._admit_and_maybe_apply(worker, tag, grads, step_var,
                                                apply_fn),
            exclusive_resource_access=False)
        # An admitted worker that did not close the step would only compute a
        # gradient certain to be dropped: wait for the new version instead.
        waited = tf.cond(tf.equal(outcome, ADMITTED),
                         lambda: self._wait_for_close(worker, step),
                         lambda: tf.constant(-1))
        with tf.control_dependencies([waited]), tf.device(self._device):
            next_tag = self.published.read_value()
            retag = self.worker_tag.scatter_nd_update([[worker]], [next_tag])
        with tf.control_dependencies([retag]):
            return tf.identity(outcome)

    # -- coordinator side ---------------------------------------------------

    def release_waiters(self):
        """Let every waiting worker return (used by the watchdog)."""
        self.release_gen.assign_add(1)

    def num_waiting(self):
        return int(tf.reduce_sum(self.waiting).numpy())

    def stats(self):
        """Counters so far, as plain Python values."""
        outcomes = self.outcomes.numpy()
        waits = self.wait_ends.numpy()
        per_worker = []
        for w in range(self.total_num_replicas):
            entry = {name: int(outcomes[w, i])
                     for i, name in enumerate(OUTCOME_NAMES)}
            entry.update(wait_closed=int(waits[w, WAIT_CLOSED]),
                         wait_released=int(waits[w, WAIT_RELEASED]),
                         wait_deadline=int(waits[w, WAIT_DEADLINE]))
            per_worker.append(entry)
        return {"published_step": int(self.published.numpy()),
                "quorum": int(self.quorum.numpy()),
                "per_worker": per_worker}
