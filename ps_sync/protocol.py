"""The synchronous-replicas protocol state and its per-push logic.

All state lives on one parameter server (the "protocol PS"), except the
gradient sums, which sit next to the variables they belong to. A push runs
inside one `tf.CriticalSection` on the protocol PS, so admission, accumulation
and the apply of a full step are one atomic unit for every variable on every
shard (invariants 2, 3 and 4 of DESIGN.md).

Servers. Inside the lock every decision (realign, admit, close) is taken on
the protocol PS first; then each parameter server gets one small decision
vector and carries out its part (its sums, its share of the update) as one
single-device functional If, and the protocol's half of a close runs once
they all have (`_admit_by_server`; the update per server comes from
`shard_apply`). A close traced as one graph would span the servers, and
every push would send its edges, as dead tensors, between them under the
lock. Optimizers that cannot be cut per server keep that whole close.

Versions. `published` is written only after an apply has finished writing
every variable. A worker's tag for its next gradient is the `published` it
read at the end of its previous push, i.e. before any read of its next
forward pass. At push time, inside the critical section, the gradient is
fresh iff tag == current step: if any apply had started after the tag was
read, the step would be larger. A gradient computed on a mix of versions
therefore always carries a stale tag (invariant 1).

Sending. Neither of a push's two critical sections waits for the worker
while it holds the lock: every cross-device hop under the lock would
serialise all workers behind one round trip (and behind a worker lost
mid-send). Once the gradients exist, a short critical section gives a fresh,
non-duplicate push leave to send while the open step is not full
(`_reserve`); a push refused is certain to be dropped and sends nothing. The
gradients with leave go straight to the shards of their sums, packed into
one tensor per server and dtype (`gradient_sums`), and
only once all of them are there does the push take the lock again to admit,
accumulate and maybe apply: all PS-local work. A push sends without asking
(the admission still decides) when the question would cost more than it
saves (`asks_leave`): without backups (N = N+b), where nothing is late in the
normal course, and for gradients under `ask_before_send_min_bytes`.

Waiting. An admitted worker that did not close its step blocks on its own
wake-up queue on the protocol PS instead of computing a gradient certain to
be dropped. Every wake-up goes through the critical section and puts one
token in the queue of each registered waiter: the closer of the step, or the coordinator-side
step watchdog (`watchdog.py`), which releases the waiters when no pending
closure could close the step (the end of an epoch), when a wait exceeds
`max_wait_s`, or when the quorum policy fails the run. So no wait outlives the
coordinator's judgement, and no wake-up is lost or doubled.
"""
import contextlib
import functools
import time
import uuid

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from ps_sync import gradient_sums

# Push outcomes and telemetry columns (pure Python, shared with readers).
from ps_sync.steplog import (  # pylint: disable=unused-import
    ADMITTED, ADMITTED_CLOSED, DROPPED_DUPLICATE, DROPPED_LATE, DROPPED_STALE,
    LOG_FIELDS, NUM_PUSH_OUTCOMES, OUTCOME_NAMES, POLICY_CLOSED)

# Ways a wait for the step to close can end.
WAIT_CLOSED = 0      # the step was applied
WAIT_RELEASED = 1    # the watchdog released it (no closure left that could
                     # close the step, or max_wait_s passed)
WAIT_FAILED = 2      # the policy failed the run
WAIT_NAMES = ("closed", "released", "failed")
RELEASE_TOKEN = -1   # a wake-up token that is not a new step

LOG_CAPACITY = 8192

# Pushes whose gradients total fewer bytes send without asking leave: the
# question is a round trip on every push, which costs more than sending and
# dropping a small gradient (see `asks_leave`).
ASK_BEFORE_SEND_MIN_BYTES = 1 << 20


def _f64(x):
    return tf.cast(x, tf.float64)


def _kept_functional(build):
    """`build()`, with every tf.cond and tf.switch_case it creates at this
    graph level kept as a functional If/Case op: only the branch taken runs,
    as one function call. A lowered one (TensorFlow's default in a
    tf.function) sends every push through each op of every branch not taken
    as a dead tensor: a per-worker branch list then costs each push O(number
    of workers) (paired windows, 3 pushing workers, N = 3, sending without
    asking: total_num_replicas 96 made 0.86x the pushes/s of 3 lowered,
    0.93x functional). A functional branch runs where the If is placed, so
    `build` may only touch resources of one device (the protocol PS): the
    accumulators and the model's variables, spread over shards, stay in
    lowered conds."""
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    out = build()
    for op in graph.get_operations()[before:]:
        if op.type in ("If", "StatelessIf", "Case", "StatelessCase"):
            # Private, but the only switch: cond_v2 sets it unconditionally.
            op._set_attr(  # pylint: disable=protected-access
                "_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))
    return out


def _one_per_device(ops):
    """A NoOp per device, after all of `ops` there: a control edge across
    devices is a send and a receive each, so depend on these instead."""
    by_device = {}
    for op in ops:
        by_device.setdefault(op.device, []).append(op)
    groups = []
    for device, members in by_device.items():
        with tf.device(device or None):
            groups.append(tf.group(*members))
    return groups


@tf.autograph.experimental.do_not_convert
def _resource_device(t, outer_of):
    """The device of the resource behind handle `t`, through the captures
    of nested function graphs. `outer_of`: {graph: {id(inner): outer}},
    filled as graphs are met (a map per handle made the check quadratic:
    35 s of tracing inception_v3_small's push on 2 PS)."""
    while hasattr(t, "graph") and t.op.type == "Placeholder":
        graph = t.graph
        if graph not in outer_of:
            outer_of[graph] = {id(inner): ext for ext, inner in graph.captures}
        outer = outer_of[graph].get(id(t))
        if outer is None:
            break
        t = outer
    return t.device


@tf.autograph.experimental.do_not_convert
def _check_one_device(ops, device):
    """A functional If runs where it is placed: every resource it reads must
    be there (else placement fails at run time, obscurely)."""
    canonical = tf.DeviceSpec.from_string(device)
    outer_of = {}
    for t in [t for op in ops if op.type in ("If", "StatelessIf")
              for t in op.inputs]:
        if t.dtype != tf.resource:
            continue
        where = _resource_device(t, outer_of)
        if where and tf.DeviceSpec.from_string(where) != canonical:
            raise ValueError(
                "ps_sync: the update of the variables on %s reads a "
                "resource on %s (%s): this optimizer cannot be cut per "
                "parameter server" % (device, where, t.name))


def _canonical(device):
    return None if device is None else tf.DeviceSpec.from_string(
        device).to_string()


def _tensors(grads):
    """The tensors of `grads`, IndexedSlices taken apart."""
    return [t for g in grads for t in (
        (g.values, g.indices) if isinstance(g, tf.IndexedSlices) else (g,))]


def asks_leave(grads, backups, min_bytes):
    """Whether a push of `grads` asks leave before sending them: only with
    backups (without them nothing is late in the normal course), only when
    every shape is static (zeros are sent in place of a refused gradient),
    and only when the gradients total at least `min_bytes`. Paired windows
    on loopback, 3 pushing workers, 76 KB gradients: N = 3 of 24 (nothing
    late) made 0.75x the pushes/s of N = 3 of 3 asking, 0.92x not asking;
    N = 2 of 3 the same pushes/s either way, 12% less CPU per push not
    asking. Over a real network the bytes cost more and the question pays
    off sooner."""
    tensors = _tensors(grads)
    if not backups or not all(t.shape.is_fully_defined() for t in tensors):
        return False
    return sum(t.shape.num_elements() * t.dtype.size
               for t in tensors) >= min_bytes


def _waits(outcome):
    """Pushes whose worker then waits for the open step to close: admitted
    ones that did not close it, and duplicates. A duplicate comes from a
    worker woken without its step closing (a release, or a token left in its
    queue by its previous life); without waiting it would compute gradient
    after gradient on a version it already contributed to."""
    return tf.logical_or(tf.equal(outcome, ADMITTED),
                         tf.equal(outcome, DROPPED_DUPLICATE))


class SyncProtocol(tf.Module):
    """Protocol state on the parameter servers and the graph of one push.

    Created on the coordinator (under the strategy's scope, outside any
    `tf.function`); `push` is called inside the worker's step function.
    """
    # The model's variables are not the protocol's (`variables` is its state).
    _TF_MODULE_IGNORED_PROPERTIES = frozenset(
        tf.Module._TF_MODULE_IGNORED_PROPERTIES | {"_var_list"})

    def __init__(self, var_list, replicas_to_aggregate, total_num_replicas,
                 run_id=None, initial_step=-1, step_var=None,
                 ask_before_send_min_bytes=ASK_BEFORE_SEND_MIN_BYTES,
                 sparse=None):
        super().__init__(name="ps_sync_protocol")
        if not 1 <= replicas_to_aggregate <= total_num_replicas:
            raise ValueError(
                "replicas_to_aggregate must be between 1 and "
                "total_num_replicas (%d), got %d"
                % (total_num_replicas, replicas_to_aggregate))
        self.replicas_to_aggregate = int(replicas_to_aggregate)
        self.total_num_replicas = int(total_num_replicas)
        self.ask_before_send_min_bytes = int(ask_before_send_min_bytes)
        # Whether pushes ask leave (`asks_leave`), once a push is traced.
        self.asks_leave = None
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
            # Beside the global step, which every push reads inside the
            # critical section: elsewhere, each read was a round trip
            # between parameter servers under the lock.
            with (strategy.extended.colocate_vars_with(step_var)
                  if step_var is not None else contextlib.nullcontext()):
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
                self.wait_since = var(tf.zeros([n], tf.float64),
                                      "wait_since")
                self.failed = var(tf.constant(0, tf.int32), "failed")
                # Set (inside the critical section) while the coordinator
                # writes a checkpoint: steps fill up but do not close.
                self.hold = var(tf.constant(0, tf.int32), "hold")
                # K > 0: the close that makes a multiple of K also sets the
                # hold, so the coordinator saves exactly every K updates.
                self.hold_every = var(tf.constant(0, tf.int64), "hold_every")
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
            self._var_list = tuple(var_list)
            self._sums = gradient_sums.layout(
                var_list, sparse or [False] * len(var_list), var,
                strategy.extended.colocate_vars_with)
        self.accumulators = [s.variable for s in self._sums]
        self._device = self.published.device
        # The indices of the sums on each device, in order.
        self._shards = {}
        for i, acc in enumerate(self.accumulators):
            self._shards.setdefault(acc.device, []).append(i)
        self._fns = None
        self._coordinator_apply = None

    # -- graph pieces, all traced inside the worker function ---------------

    def _critical_section(self, after, purpose):
        # The mutex is created behind the gradients: otherwise the lock could
        # be taken before the forward pass and serialise every worker.
        with tf.control_dependencies(after), tf.device(self._device):
            return tf.CriticalSection(
                shared_name="ps_sync_%s_step" % self.run_id,
                name="ps_sync_" + purpose)

    def _wake_queue(self, worker):
        # Created where it is used, with a fixed shared name: one queue per
        # worker on the protocol PS, the same for every worker function and
        # the coordinator. Per worker, because a token in a shared queue
        # goes to whichever waiter dequeues first: a waiter slow to dequeue
        # (paused, far away) lost its token to one admitted to the next
        # step, which woke on a step still open while it blocked unseen.
        with tf.device(self._device):
            return tf.raw_ops.FIFOQueueV2(
                component_types=[tf.int64], shapes=[[]], capacity=1 << 20,
                shared_name="ps_sync_%s_wake_%d" % (self.run_id, worker))

    def _hold_queue(self):
        # The close that sets the hold puts its step here; the coordinator's
        # checkpointer blocks on it instead of polling the PS (20 eager
        # round trips a second cost ~5% of the pushes/s).
        with tf.device(self._device):
            return tf.raw_ops.FIFOQueueV2(
                component_types=[tf.int64], shapes=[[]], capacity=1 << 20,
                shared_name="ps_sync_%s_holds" % self.run_id)

    def _wake_waiters(self, token):
        """Inside the critical section: a token to each registered waiter."""
        waiting = self.waiting.read_value()
        token = tf.cast(token, tf.int64)

        def wake():
            woken = [tf.raw_ops.QueueEnqueueManyV2(
                         handle=self._wake_queue(w),
                         components=[tf.fill([waiting[w]], token)])
                     for w in range(self.total_num_replicas)]
            with tf.control_dependencies(woken):
                return tf.constant(True)

        # One op in the push's graph, however many workers there are.
        woken = _kept_functional(lambda: tf.cond(
            tf.reduce_any(waiting > 0), wake, lambda: tf.constant(False)))
        with tf.control_dependencies([woken]):
            cleared = self.waiting.assign(tf.zeros_like(waiting),
                                          read_value=True)
        with tf.control_dependencies([cleared]):
            return tf.constant(True)

    def _record(self, fields, keep=True):
        """Append one telemetry row (inside the critical section). With
        `keep` false the row is written but not appended: no tf.cond, which
        costs more than a row on the PS."""
        row = tf.stack([_f64(fields[name]) for name in LOG_FIELDS])
        index = self.log_next.read_value()
        written = self.log.scatter_nd_update([[index % LOG_CAPACITY]], [row])
        with tf.control_dependencies([written]):
            appended = self.log_next.assign_add(tf.cast(keep, tf.int64),
                                                read_value=True)
        with tf.control_dependencies([appended]):
            return tf.constant(True)

    def _realign(self, step, sums=True):
        """Open `step` if the state belongs to another one (first push, or a
        checkpoint restore moved the step). Returns (step, whether it was
        opened). Without `sums` the gradient sums are left to the servers'
        own branches (`_server_step`)."""
        realigned = tf.not_equal(self.published, step)

        def reset():
            ops = ([gradient_sums.clear(s) for s in self._sums]
                   if sums else [])
            with tf.control_dependencies(ops):
                ops = [self.count.assign(0),
                       self.admitted.assign(tf.zeros_like(self.admitted))]
            with tf.control_dependencies(ops):
                return self.published.assign(step, read_value=True)

        def opened():
            return tf.cond(realigned, reset,
                           lambda: self.published.read_value())
        # Without the sums, all on the protocol PS: a functional If.
        return (opened() if sums else _kept_functional(opened)), realigned

    def _quorum(self, step):
        lowered = self.lowered.read_value()
        return tf.where(tf.equal(lowered // 2**16, step),
                        tf.cast(lowered % 2**16, tf.int32),
                        self.replicas_to_aggregate)

    def _closable(self, step):
        return self._closes(step, self.count.read_value())

    def _accumulate(self, grads):
        """Add `grads` (one payload per sum, as sent) to the sums, all or
        none: every payload is received on its shard before any sum
        changes, so a worker that dies (or is cut off) halfway through
        sending never leaves part of its gradient in a step (invariant 6)."""
        with tf.control_dependencies(_tensors(grads)):
            return [s.add(g) for s, g in zip(self._sums, grads)]

    def _close(self, step_var, apply_fn):
        """Apply the mean of the accumulated gradients and open the next step.
        Returns the quorum the step closed with."""
        begin = self.apply_seq.assign_add(1, read_value=True)
        with tf.control_dependencies([begin]):
            count = self.count.read_value()
            means = gradient_sums.means_in_order(self._sums, count,
                                                 len(self._var_list))
        graph = tf.compat.v1.get_default_graph()
        made_before = len(graph.get_operations())
        applied = apply_fn(means)
        # After every op of the apply, not only its result: tf-keras'
        # Optimizer returns its step increment, which depends on none of its
        # variable writes. A waiter woken before a write on another shard
        # landed read the old value under the new tag (a stale gradient
        # admitted, caught by the probe in tests/test_sync_checkpoint.py).
        wrote = _one_per_device(graph.get_operations()[made_before:])
        with tf.control_dependencies(tf.nest.flatten(applied) + wrote):
            new_step = tf.cast(step_var.read_value(), tf.int64)
        with tf.control_dependencies([new_step]):
            cleared = [gradient_sums.clear(s) for s in self._sums]
        return self._open_next(new_step, cleared, count)

    def _open_next(self, new_step, after, count):
        """The protocol's half of a close, once the update is applied
        everywhere (`after`): open step `new_step`. Returns `count`."""
        with tf.control_dependencies([new_step] + after):
            resets = [self.count.assign(0),
                      self.admitted.assign(tf.zeros_like(self.admitted))]
            every = self.hold_every.read_value()
            holds = tf.logical_and(
                every > 0, tf.equal(new_step % tf.maximum(every, 1), 0))
            resets.append(self.hold.assign(tf.where(
                holds, 1, self.hold.read_value())))
            # No cond: a step token, or nothing.
            resets.append(tf.raw_ops.QueueEnqueueManyV2(
                handle=self._hold_queue(),
                components=[tf.fill([tf.cast(holds, tf.int32)], new_step)]))
        # Written last: a tag equal to it promises a complete version.
        with tf.control_dependencies(resets):
            published = self.published.assign(new_step, read_value=True)
        with tf.control_dependencies([published]):
            woken = self._wake_waiters(published)
        with tf.control_dependencies([woken]):
            end = self.apply_seq.assign_add(1, read_value=True)
        with tf.control_dependencies([end]):
            return tf.identity(count)

    def _retag(self, worker, keep=False):
        """Give `worker` the current version as the tag of its next gradient
        (the version its next forward pass will read, or a newer one);
        `keep` leaves the tag as it is (a waiter retags after its wait)."""
        tag = self.worker_tag.scatter_nd_update([[worker]], [tf.where(
            keep, self.worker_tag[worker], self.published.read_value())])
        stamp = self.ready_at.scatter_nd_update([[worker]], [tf.where(
            keep, self.ready_at[worker], tf.timestamp())])
        with tf.control_dependencies([tag, stamp]):
            return tf.constant(True)

    def _admit_and_maybe_apply(self, worker, computed_at, grads, step_var,
                               apply_fn, sent=True, by_server=None,
                               read=None):
        """Body of the push's critical section: (outcome, waits).

        The step closes here once its admitted count reaches the quorum: on
        the N-th admitted push, or, after a lowered quorum or a checkpoint
        hold, on the next push (or the coordinator's `close_if_closable`).
        With `by_server` (a `shard_apply` updater) the sums and the update
        are handled per parameter server (`_server_steps`), with the
        scalars `read` before the lock; otherwise the update is `apply_fn`,
        traced whole.
        """
        # Every input from the worker is received before any state changes:
        # a worker lost mid-push would otherwise leave a push half recorded
        # (e.g. counted in the step but missing from the telemetry).
        computed_at = tf.identity(computed_at)
        worker = tf.identity(worker)
        with tf.control_dependencies([computed_at, worker]):
            arrived_at = tf.timestamp()
            step, realigned = self._realign(
                tf.cast(step_var.read_value(), tf.int64),
                sums=by_server is None)
        tag = self.worker_tag[worker]
        ready_at = self.ready_at[worker]
        # One tf.cond per decision: each costs far more than arithmetic.
        outcome = tf.where(
            tf.not_equal(tag, step), DROPPED_STALE,
            tf.where(tf.equal(self.admitted[worker], 1), DROPPED_DUPLICATE,
                     tf.where(self.count >= self._quorum(step), DROPPED_LATE,
                              ADMITTED)))
        # A push refused leave to send (`_reserve`) was stale, a duplicate or
        # late when it asked, so it still is; the exception, a quorum lowered
        # in between, drops it all the same: nothing arrived to admit.
        outcome = tf.where(tf.logical_and(tf.equal(outcome, ADMITTED),
                                          tf.logical_not(sent)),
                           DROPPED_LATE, outcome)

        admitted = tf.equal(outcome, ADMITTED)
        quorum = self._quorum(step)
        if by_server is not None:
            rank, closed = self._admit_by_server(
                worker, step, realigned, admitted, grads, step_var, by_server,
                read)
        else:
            def admit():
                with tf.control_dependencies(self._accumulate(grads)):
                    rank = self.count.assign_add(1, read_value=True)
                    mark = self.admitted.scatter_nd_update([[worker]], [1])
                with tf.control_dependencies([mark]):
                    return tf.identity(rank)

            rank = tf.cond(admitted, admit, lambda: tf.constant(0))
            with tf.control_dependencies([rank]):
                closed = self._close_if_closable(
                    step, step_var, apply_fn, worker,
                    tf.logical_not(admitted))
        outcome = tf.where(tf.logical_and(admitted, closed > 0),
                           ADMITTED_CLOSED, outcome)
        counted = self.outcomes.scatter_nd_add([[worker, outcome]],
                                               tf.constant([1], tf.int64))
        logged = self._record(dict(
            step=step, tag=tag, worker=worker, ready_at=ready_at,
            computed_at=computed_at, arrived_at=arrived_at, outcome=outcome,
            admitted_rank=rank, quorum=quorum))
        # A worker that waits for the step to close takes its tag after the
        # wait; every other one takes it now. Once the run has failed nobody
        # waits: the watchdog has stopped and would never release it.
        waits = tf.logical_and(_waits(outcome),
                               tf.equal(self.failed.read_value(), 0))
        retagged = self._retag(worker, keep=waits)
        marked = self.waiting.scatter_nd_update([[worker]],
                                                [tf.cast(waits, tf.int32)])
        since = self.wait_since.scatter_nd_update([[worker]],
                                                  [tf.timestamp()])
        with tf.control_dependencies([counted, logged, retagged, marked,
                                      since]):
            return tf.identity(outcome), tf.identity(waits)

    def _admit_by_server(self, worker, step, realigned, admitted, grads,
                         step_var, by_server, read):
        """Admission with the sums and the update cut per server: every
        decision is taken here first, on the protocol PS, then each server
        carries out its part in one branch, and the protocol's half of a
        close runs once they all have. Returns (rank, closed count)."""
        count = self.count.read_value() + tf.cast(admitted, tf.int32)
        closes = self._closes(step, count)
        done = self._server_steps(step, realigned, admitted, closes, count,
                                  grads, by_server, read)
        with tf.control_dependencies(done):
            rank = self.count.assign_add(tf.cast(admitted, tf.int32),
                                         read_value=True)
            mark = self.admitted.scatter_nd_update(
                [[worker]], [tf.where(admitted, 1, self.admitted[worker])])
        with tf.control_dependencies([mark]):
            rank = tf.where(admitted, rank, 0)
            closed = self._close_by_server(step, step_var, closes, worker,
                                           tf.logical_not(admitted))
        return rank, closed

    def _closes(self, step, count):
        """Whether a step of `count` admitted gradients closes now."""
        return tf.logical_and(
            tf.logical_and(count > 0, count >= self._quorum(step)),
            tf.equal(self.hold.read_value(), 0))

    def _server_steps(self, step, realigned, admitted, closes, count, grads,
                      by_server, read=None):
        """On each parameter server, one functional If: clear its sums if
        the step was realigned, add the admitted gradients, and on a close
        apply its share of the update and clear them. Returns one token per
        server, ready once its branch is done (or skipped)."""
        begin = self.apply_seq.assign_add(tf.cast(closes, tf.int64))
        # Everything a server needs from under the lock in one vector, one
        # transfer per server: [realigned, admitted, closes, count, step,
        # the schedule's rate at step (its float64 bits), if any].
        rate = by_server.current_rate(step)
        with tf.control_dependencies([begin]):
            code = tf.stack(
                [tf.cast(x, tf.int64)
                 for x in (realigned, admitted, closes, count, step)]
                + ([] if rate is None else
                   [tf.bitcast(tf.cast(rate, tf.float64), tf.int64)]))
        if read is None:
            read = by_server.read_scalars()

        def values(local):
            return by_server.scalar_values(
                local[4], read, rate=(None if rate is None
                                      else tf.bitcast(local[5], tf.float64)))

        # The update's other writes (a schedule's current rate) are made by
        # a close, in the branch of the server they live on (written on
        # every push, under the lock, they were one more write there, often
        # on another server), or in a branch of their own on a server that
        # holds no sums.
        records_on = _canonical(by_server.record_device())
        recorded = []
        if records_on is not None and records_on not in map(_canonical,
                                                             self._shards):
            with tf.device(records_on), tf.control_dependencies(None):
                local = tf.identity(code)

                def record():
                    with tf.control_dependencies(
                            by_server.record(values(local))):
                        return tf.constant(True)
                recorded.append(_kept_functional(lambda: tf.cond(
                    local[2] > 0, record, lambda: tf.constant(False))))
        done = []
        graph = tf.compat.v1.get_default_graph()
        for device, indices in self._shards.items():
            made_before = len(graph.get_operations())
            # Ordered after the lock through `code`; without the critical
            # section's own control edge, one transfer less per server.
            with tf.device(device), tf.control_dependencies(None):
                local = tf.identity(code)  # one transfer per server
                branch = functools.partial(
                    self._server_step, indices, local, grads, by_server,
                    functools.partial(values, local),
                    records=_canonical(device) == records_on)
                done.append(_kept_functional(lambda: tf.cond(
                    tf.reduce_any(local[:3] > 0), branch,
                    lambda: tf.constant(False))))
            _check_one_device(graph.get_operations()[made_before:], device)
        return done + recorded

    def _server_step(self, indices, code, grads, by_server, values,
                     records=False):
        """The branch of one server (see `_server_steps`): only its own
        variables, slots and sums, and with `records` the update's other
        writes (`by_server.record`), which live there. `values()`: the
        scalars the update reads, made here from `code`."""
        realigned, admitted, closes = code[0] > 0, code[1] > 0, code[2] > 0
        sums = [self._sums[i] for i in indices]

        def when(pred, build):
            def run():
                with tf.control_dependencies(build()):
                    return tf.constant(True)
            return tf.cond(pred, run, lambda: tf.constant(False))

        cleared = when(realigned, lambda: [gradient_sums.clear(s)
                                           for s in sums])
        with tf.control_dependencies([cleared]):
            added = (when(admitted, lambda: [
                s.add(grads[i]) for i, s in zip(indices, sums)])
                     if grads is not None else tf.constant(False))

        def update():
            count = tf.cast(code[3], tf.int32)
            means = [(mean, self._var_list[i]) for s in sums
                     for i, mean in s.means(count)]
            graph = tf.compat.v1.get_default_graph()
            made_before = len(graph.get_operations())
            scalars = values()
            by_server.apply(means, scalars)
            if records:
                by_server.record(scalars)
            with tf.control_dependencies(
                    graph.get_operations()[made_before:]):
                return [gradient_sums.clear(s) for s in sums]

        with tf.control_dependencies([added]):
            closed = when(closes, update)
        with tf.control_dependencies([closed]):
            return tf.constant(True)

    def _close_by_server(self, step, step_var, closes, closer, record_close):
        """The protocol's half of a close cut per server (the servers have
        applied the update): advance the global step and open the next."""
        def close():
            new_step = tf.cast(step_var.assign_add(1, read_value=True),
                               tf.int64)
            return self._open_next(new_step, [], self.count.read_value())
        return _kept_functional(lambda: tf.cond(
            closes, self._logged_close(step, close, closer, record_close),
            lambda: tf.constant(0)))

    def _logged_close(self, step, close, closer, record_close):
        """`close`, then its telemetry row: kept when the closer's push did
        not count in the step (a lowered quorum, the end of a hold)."""
        def run():
            closed = close()
            logged = self._record(dict(
                step=step, tag=step, worker=closer, ready_at=0.0,
                computed_at=0.0, arrived_at=tf.timestamp(),
                outcome=POLICY_CLOSED, admitted_rank=closed,
                quorum=self._quorum(step)), keep=record_close)
            with tf.control_dependencies([logged]):
                return tf.identity(closed)
        return run

    def _close_if_closable(self, step, step_var, apply_fn, closer,
                           record_close):
        """Close the open step if its quorum is reached and no hold is set;
        log the close on its own when the closer's push did not count in it.
        Returns the number of gradients the step closed with (0: open)."""
        # One function call as the branch: a lowered cond sends every push
        # that does not close through each of the close's ~130 ops as dead
        # tensors (paired windows, every task a process: a minimal protocol
        # made 0.88x async's pushes/s so, 0.73x without).
        close = tf.function(self._logged_close(
            step, lambda: self._close(step_var, apply_fn), closer,
            record_close), autograph=False)
        return tf.cond(self._closable(step), close, lambda: tf.constant(0))

    def _wait_for_close(self, worker):
        """Block until a wake-up token for this wait arrives (the worker was
        registered as a waiter inside its push's critical section). Returns
        how the wait ended."""
        def dequeue(w):
            token, = tf.raw_ops.QueueDequeueV2(handle=self._wake_queue(w),
                                               component_types=[tf.int64])
            return token

        with tf.device(self._device):
            token = _kept_functional(lambda: tf.switch_case(
                worker, [functools.partial(dequeue, w)
                         for w in range(self.total_num_replicas)]))
        # Explicit: nothing below touches the queue, so automatic control
        # dependencies would let the retag read the version before the wake.
        with tf.control_dependencies([token]), tf.device(self._device):
            ended = tf.where(tf.equal(token, RELEASE_TOKEN), WAIT_RELEASED,
                             WAIT_CLOSED)
            ended = tf.where(self.failed.read_value() > 0, WAIT_FAILED, ended)
            retagged = self._retag(worker)
            count = self.wait_ends.scatter_nd_add([[worker, ended]],
                                                  tf.constant([1], tf.int64))
        with tf.control_dependencies([count, retagged]):
            return tf.identity(ended)

    def _reserve(self, worker):
        """Body of the short critical section a push takes once its gradients
        exist: may they be sent? Only if fresh, not a duplicate, and the open
        step is not full yet; a push refused is certain to be dropped (a
        stale tag stays stale, a duplicate stays one until the step closes,
        a full step closes or stays held). Leave is not a slot: several
        pushes may race for the last place and the first to arrive takes
        it. A held slot would let a straggler stopped between asking and
        sending hold the step while the backups were refused."""
        published = self.published.read_value()
        return tf.logical_and(
            tf.logical_and(tf.equal(self.worker_tag[worker], published),
                           tf.equal(self.admitted[worker], 0)),
            self.count.read_value() < self._quorum(published))

    def _payloads(self, grads):
        """What the push sends, one payload per sum, built on the worker."""
        return [s.payload(grads) for s in self._sums]

    def _send(self, grads):
        """Each sum's payload (`gradient_sums`) on its shard,
        unconditionally."""
        out = []
        for acc, g in zip(self.accumulators, self._payloads(grads)):
            with tf.device(acc.device):
                out.append(tf.IndexedSlices(tf.identity(g.values),
                                            tf.identity(g.indices),
                                            g.dense_shape)
                           if isinstance(g, tf.IndexedSlices)
                           else tf.identity(g))
        return out

    def _send_if_reserved(self, reserved, grads):
        """Each sum's payload on its shard if `reserved`, else zeros made
        there: a gradient certain to be dropped never leaves the worker.
        Every shape is static (`asks_leave`)."""
        out = []
        for acc, g in zip(self.accumulators, self._payloads(grads)):
            if isinstance(g, tf.IndexedSlices):
                parts = [g.values, g.indices]
                zeros = [(tf.TensorShape([0]).concatenate(g.values.shape[1:]),
                          g.values.dtype),
                         (tf.TensorShape([0]), g.indices.dtype)]
            else:
                parts, zeros = [g], [(g.shape, g.dtype)]
            with tf.device(acc.device):
                sent = tf.cond(reserved,
                               lambda parts=parts: [tf.identity(t)
                                                    for t in parts],
                               lambda zeros=zeros: [tf.zeros(shape, dtype)
                                                    for shape, dtype in zeros])
            out.append(tf.IndexedSlices(sent[0], sent[1], g.dense_shape)
                       if isinstance(g, tf.IndexedSlices) else sent[0])
        return out

    def push(self, worker, grads, step_var, apply_fn, by_server=None):
        """One worker's push of `grads` (aligned with the var_list).

        `step_var` is the global step (the wrapped optimizer's iterations);
        `apply_fn(mean_grads)` applies one update and advances it; with
        `by_server` (a `shard_apply` updater) the update is cut per
        parameter server instead and `apply_fn` is not used. Returns the
        push outcome (on the protocol PS); raises (in-graph) if the quorum
        policy failed the run.
        """
        deps = [g.values if isinstance(g, tf.IndexedSlices) else g
                for g in grads]
        with tf.control_dependencies(deps):
            computed_at = tf.timestamp()
        # One transfer for both: each cross-task tensor is an RPC on the
        # step's critical path (a float64 holds any worker index exactly).
        meta = tf.stack([tf.cast(worker, tf.float64), computed_at])
        with tf.device(self._device):
            meta = tf.identity(meta)
            worker = tf.cast(meta[0], tf.int32)
            computed_at = meta[1]
        self.asks_leave = asks_leave(
            grads, self.replicas_to_aggregate < self.total_num_replicas,
            self.ask_before_send_min_bytes)
        if self.asks_leave:
            # Asked once the gradients exist (computed_at waits for them).
            leave_cs = self._critical_section([worker, computed_at], "leave")
            with tf.device(self._device):
                reserved = leave_cs.execute(lambda: self._reserve(worker),
                                            exclusive_resource_access=False)
            sent = self._send_if_reserved(reserved, grads)
        else:
            # Sent at once; the admission decides as always. Without
            # backups every push is fresh bar a restart's duplicate, so
            # asking would save nothing (paired windows at N = 3: 23% more
            # pushes/s without it).
            sent, reserved = self._send(grads), tf.constant(True)
        read = by_server.read_scalars() if by_server is not None else None
        # The lock is taken once everything is on the PS.
        after = [worker, computed_at] + _tensors(sent)
        cs = self._critical_section(after + [reserved], "push")
        with tf.device(self._device):
            outcome, waits = cs.execute(
                lambda: self._admit_and_maybe_apply(
                    worker, computed_at, sent, step_var, apply_fn,
                    sent=reserved, by_server=by_server, read=read),
                exclusive_resource_access=False)
            # An admitted worker that did not close the step would only
            # compute a gradient certain to be dropped: wait for the new
            # version instead. (A worker that dies waiting leaves a wake-up
            # token in its queue: restarted, it wakes early once, pushes a
            # duplicate, waits again.)
            # All on the protocol PS: a functional If.
            waited = _kept_functional(lambda: tf.cond(
                waits, lambda: self._wait_for_close(worker),
                lambda: tf.constant(-1)))
            # Read after the wait: the run may have failed meanwhile.
            with tf.control_dependencies([waited]):
                ok = tf.equal(self.failed.read_value(), 0)
            # Read after the flag: the message is written before the flag.
            with tf.control_dependencies([ok]):
                message = self.fail_message.read_value()
            check = tf.debugging.Assert(ok, [message],
                                        name="ps_sync_quorum_failed")
            with tf.control_dependencies([check]):
                return tf.identity(outcome)

    def set_coordinator_apply(self, apply_fn, step_var, strategy,
                              by_server=None):
        """How the coordinator applies an update (cross-replica, under
        `strategy`; per server with `by_server`, as the pushes do), for
        `close_if_closable`."""
        self._coordinator_apply = (apply_fn, step_var, strategy, by_server)
        self._fns = None

    def close_if_closable(self):
        """From the coordinator: close the open step if it has its (lowered)
        quorum and no hold is set. A policy's lowered quorum or the end of a
        checkpoint hold would otherwise wait for the next push. Returns the
        number of gradients the step closed with, 0 if it stayed open."""
        if self._coordinator_apply is None:
            return 0
        strategy = self._coordinator_apply[2]
        with strategy.scope():
            return int(self._functions()["close"]().numpy())

    # -- coordinator side ---------------------------------------------------

    def _functions(self):
        """The coordinator's functions on the protocol PS, built once.

        Adding a function to the eager context registers it on every remote
        task at once, synchronously and holding the GIL: a function first
        traced while a worker is stopped or cut off froze the whole
        coordinator (a watchdog release under a SIGSTOPped worker deadlocked
        with the thread that was to resume it). `prepare_coordinator`
        traces them all up front, while the cluster is healthy."""
        if self._fns is not None:
            return self._fns
        fns = {}

        @tf.function
        def release():
            cs = self._critical_section([], "release")
            with tf.device(self._device):
                def body():
                    count = tf.reduce_sum(self.waiting)
                    with tf.control_dependencies([count]):
                        woken = self._wake_waiters(RELEASE_TOKEN)
                    with tf.control_dependencies([woken]):
                        return tf.identity(count)
                return cs.execute(body, exclusive_resource_access=False)
        fns["release"] = release.get_concrete_function()

        @tf.function
        def snapshot():
            # One call instead of an eager op per read (the watchdog's
            # eager reads took about 3 ms of coordinator CPU per poll).
            # Inside the critical section: the step and its workers from
            # one moment.
            cs = self._critical_section([], "snapshot")
            with tf.device(self._device):
                return cs.execute(lambda: tf.concat([
                    [self.published.read_value()],
                    tf.cast(self.admitted.read_value(), tf.int64),
                    tf.cast(self.waiting.read_value(), tf.int64)], 0),
                    exclusive_resource_access=False)
        fns["snapshot"] = snapshot.get_concrete_function()

        @tf.function
        def oldest_wait_since():
            with tf.device(self._device):
                return tf.reduce_min(tf.where(
                    self.waiting.read_value() > 0,
                    self.wait_since.read_value(),
                    tf.constant(float("inf"), tf.float64)))
        fns["oldest_wait_since"] = oldest_wait_since.get_concrete_function()

        @tf.function
        def set_hold(value):
            cs = self._critical_section([value], "hold")
            return cs.execute(lambda: self.hold.assign(value,
                                                       read_value=True),
                              exclusive_resource_access=False)
        fns["set_hold"] = set_hold.get_concrete_function(
            tf.TensorSpec([], tf.int32))

        @tf.function
        def next_hold():
            with tf.device(self._device):
                token, = tf.raw_ops.QueueDequeueV2(
                    handle=self._hold_queue(), component_types=[tf.int64])
                return token
        fns["next_hold"] = next_hold.get_concrete_function()

        @tf.function
        def put_hold_token(token):
            with tf.device(self._device):
                tf.raw_ops.QueueEnqueueV2(handle=self._hold_queue(),
                                          components=[token])
        fns["put_hold_token"] = put_hold_token.get_concrete_function(
            tf.TensorSpec([], tf.int64))

        @tf.function
        def assign(variable, value):
            variable.assign(value)
        for name, spec in (("lowered", tf.TensorSpec([], tf.int64)),
                           ("hold_every", tf.TensorSpec([], tf.int64))):
            variable = getattr(self, name)
            fns["assign_" + name] = functools.partial(
                assign.get_concrete_function(variable, spec), variable)

        @tf.function
        def fail(message):
            # The message first: a closure that sees the flag reads it.
            with tf.control_dependencies([self.fail_message.assign(message)]):
                self.failed.assign(1)
        fns["fail"] = fail.get_concrete_function(tf.TensorSpec([], tf.string))

        if self._coordinator_apply is not None:
            apply_fn, step_var, strategy, by_server = self._coordinator_apply

            def close_by_server():
                step = self.published.read_value()
                count = self.count.read_value()
                closes = self._closes(step, count)
                no = tf.constant(False)
                done = self._server_steps(step, no, no, closes, count, None,
                                          by_server)
                with tf.control_dependencies(done):
                    return self._close_by_server(step, step_var, closes, -1,
                                                 tf.constant(True))

            @tf.function
            def close():
                cs = self._critical_section([], "coordinator_close")
                with tf.device(self._device):
                    return cs.execute(
                        close_by_server if by_server is not None else
                        lambda: self._close_if_closable(
                            self.published.read_value(), step_var, apply_fn,
                            -1, tf.constant(True)),
                        exclusive_resource_access=False)
            with strategy.scope():
                fns["close"] = close.get_concrete_function()
        self._fns = fns
        return fns

    def prepare_coordinator(self):
        """Trace every coordinator-side function now (see `_functions`);
        call after `set_coordinator_apply`, before training."""
        self._functions()

    def release_waiters(self):
        """Wake every registered waiter (from the coordinator): its step
        stays open. Returns how many were woken."""
        return int(self._functions()["release"]().numpy())

    def oldest_wait_s(self):
        """Seconds the longest current waiter has waited, or 0."""
        since = float(self._functions()["oldest_wait_since"]().numpy())
        return 0.0 if since == float("inf") else time.time() - since

    def lower_quorum(self, step, quorum):
        """Lower the quorum of open step `step`; no effect on any other
        step, so a lowering that races with the step's close is harmless."""
        quorum = max(1, min(int(quorum), self.replicas_to_aggregate))
        self._functions()["assign_lowered"](
            tf.constant(int(step) * 2**16 + quorum, tf.int64))

    def set_hold(self, on):
        """Hold (or let go) every step close. Runs inside the critical
        section, so once it returns no update is being applied."""
        self._functions()["set_hold"](tf.constant(1 if on else 0, tf.int32))

    def set_hold_every(self, every_n_updates):
        """Hold every step close after each multiple of `every_n_updates`
        applied updates (0: never), until `set_hold(False)`."""
        self._functions()["assign_hold_every"](
            tf.constant(max(0, int(every_n_updates)), tf.int64))

    def next_hold(self):
        """Block until a close sets the hold (returns its step) or
        `interrupt_next_hold` is called (returns -1). Tokens queue up: none
        is lost while nobody waits."""
        return int(self._functions()["next_hold"]().numpy())

    def interrupt_next_hold(self):
        """Return -1 from one `next_hold`, now or the next one called."""
        self._functions()["put_hold_token"](tf.constant(-1, tf.int64))

    def held(self):
        return bool(self.hold.numpy())

    def fail(self, message):
        self._functions()["fail"](tf.constant(message))

    def _snapshot(self):
        """(open step, admitted flag per worker, waiting flag per worker),
        all from one moment, in one call."""
        values = self._functions()["snapshot"]().numpy()
        n = self.total_num_replicas
        return int(values[0]), values[1:1 + n], values[1 + n:]

    def open_step(self):
        """(step, count, admitted workers) of the open step."""
        step, admitted, _ = self._snapshot()
        admitted = tuple(int(w) for w in admitted.nonzero()[0])
        return step, len(admitted), admitted

    def apply_sequence(self):
        """The apply seqlock counter: odd while an update is applied."""
        return int(self.apply_seq.numpy())

    def num_waiting(self):
        return int(self._snapshot()[2].sum())

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
                "per_worker": per_worker, "asks_leave": self.asks_leave}
