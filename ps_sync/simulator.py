"""A discrete-event simulator of parameter-server training with backups.

Pure Python (no TensorFlow): predicts step times and updates per second of
asynchronous, synchronous N-of-N and synchronous N-of-(N+b) training for any
N and b, from a worker-time distribution (measured: `ps_sync.sim_calibration`,
or parametric: `paper_tail`).

What is modelled, and why each piece (semantics of ps_sync/protocol.py):
- A worker computes a gradient (a CPU job of `work` seconds at full speed),
  which then travels `latency_s` to the protocol PS.
- The protocol PS runs one push at a time (the push's critical section):
  `push_cost_s` per push, plus `apply_cost_s` for the push that applies an
  update. Pushes queue in arrival order.
- Sync: a push is fresh iff its version tag equals the open step. A fresh
  push is admitted; the one that brings the count to the quorum applies the
  update and the step advances. An admitted worker that did not close the
  step waits, and starts on the new parameters `wake_s` after the apply
  ends. The closer starts on them as soon as its push returns. A stale push
  (computed on an older version) is dropped and that worker takes the
  current version as its next tag at once, inside the same critical section
  (protocol `_retag`): it starts computing on the open step's parameters,
  which may already be half collected. b = 0 gives N-of-N.
- Async: every push is applied (push and apply cost), and the worker starts
  again on the parameters it gets back.
- Contention: workers are laid out `workers_per_machine` to a machine of
  `cores_per_machine` cores; the computing (not waiting, not paused)
  workers of a machine share its cores equally (processor sharing), so k
  busy workers on c < k cores each run at c/k speed.
- Pauses: a paused worker makes no progress (SIGSTOP of the launcher's
  straggler injection); replayed from a run's log or drawn from a spec.
- Wake-ups: every waiter gets its own wake-up, as the protocol does now
  (one queue per worker). `shared_wake_queue=True` models the earlier
  protocol, which put anonymous tokens on one queue that every waiter
  dequeued from in the order their dequeues reached the PS: a waiter paused
  between its push and its dequeue could find its token taken by a worker
  that registered after it, which woke on a version it had already
  contributed to and pushed duplicates until the step closed, while the
  robbed waiter blocked unregistered (one backup fewer for good).
  `lost_wakeups` starts that many workers robbed (diagnosing runs made
  before the fix).
- Quorum policies: the `ps_sync.quorum` policy objects themselves are polled
  every `poll_s` like the coordinator's step watchdog does; a lowered quorum
  closes the step at once (the coordinator's close goes through the PS queue
  too) or on the next fresh push. A policy with `observe` learns from the
  rows the PS's telemetry log would hold (arrived_at: when the push's
  service starts), through the same steplog.StepArrivals as the watchdog.

Times are in seconds of simulated time; the clock starts with every worker
ready to compute on version 0.
"""
import collections
import dataclasses
import heapq
import math
import random
import statistics

from ps_sync import quorum as quorum_lib
from ps_sync import steplog


# -- worker-time distributions ----------------------------------------------
# A distribution draws the work of one gradient (seconds at full speed) for a
# given worker: `sample(worker, rng)`.

class Fixed:
    """Always `value` seconds (a list: one value per worker)."""

    def __init__(self, value):
        self.values = value if isinstance(value, (list, tuple)) else None
        self.value = None if self.values else float(value)

    def sample(self, worker, rng):  # pylint: disable=unused-argument
        return float(self.values[worker % len(self.values)]) \
            if self.values else self.value

    def mean(self):
        return statistics.fmean(self.values) if self.values else self.value


class Exponential:
    """`shift` + Exp(rate)."""

    def __init__(self, rate, shift=0.0):
        if rate <= 0:
            raise ValueError("rate must be positive, got %r" % rate)
        self.rate, self.shift = float(rate), float(shift)

    def sample(self, worker, rng):  # pylint: disable=unused-argument
        return self.shift + rng.expovariate(self.rate)

    def mean(self):
        return self.shift + 1.0 / self.rate


class LogNormal:
    """Median `median`, log-standard deviation `sigma`."""

    def __init__(self, median, sigma):
        if median <= 0 or sigma < 0:
            raise ValueError("lognormal needs median > 0 and sigma >= 0, got "
                             "%r, %r" % (median, sigma))
        self.median, self.sigma = float(median), float(sigma)

    def sample(self, worker, rng):  # pylint: disable=unused-argument
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))

    def mean(self):
        return self.median * math.exp(self.sigma ** 2 / 2)

    def cdf(self, x):
        if x <= 0:
            return 0.0
        if self.sigma == 0:
            return float(x >= self.median)
        return statistics.NormalDist().cdf(math.log(x / self.median)
                                           / self.sigma)


class Empirical:
    """Resamples measured values (pooled, or one list per worker)."""

    def __init__(self, values, per_worker=None, scale=1.0):
        self.values = [float(v) for v in values]
        self.per_worker = per_worker
        self.scale = float(scale)
        if not self.values:
            raise ValueError("an empirical distribution needs values")

    def sample(self, worker, rng):
        values = self.values
        if self.per_worker and self.per_worker[worker % len(self.per_worker)]:
            values = self.per_worker[worker % len(self.per_worker)]
        return self.scale * values[rng.randrange(len(values))]

    def scaled(self, factor):
        return Empirical(self.values, self.per_worker, self.scale * factor)

    def mean(self):
        return self.scale * statistics.fmean(self.values)


class PerWorker:
    """Worker w draws from dists[w] (e.g. a few slow machines)."""

    def __init__(self, dists):
        self.dists = list(dists)

    def sample(self, worker, rng):
        return self.dists[worker % len(self.dists)].sample(worker, rng)

    def mean(self):
        return statistics.fmean(d.mean() for d in self.dists)


# -- the paper's heavy tail ---------------------------------------------------

def count_within_probs(p_fast, p_slow, n, slow):
    """P(0 late) and P(at most 1 late) of n workers, `slow` of them late
    with probability p_slow and the others with p_fast (independent)."""
    fast = n - slow
    # Distribution of the number late: binomial(fast) convolved with
    # binomial(slow); only counts 0 and 1 are needed.
    f0 = (1 - p_fast) ** fast
    f1 = fast * p_fast * (1 - p_fast) ** (fast - 1) if fast else 0.0
    s0 = (1 - p_slow) ** slow
    s1 = slow * p_slow * (1 - p_slow) ** (slow - 1) if slow else 0.0
    return f0 * s0, f0 * s0 + f1 * s0 + f0 * s1


def _bisect(fn, lo, hi, iters=200):
    """Root of an increasing fn on [lo, hi]."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fn(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate_paper_tail(n=100, within_s=2.0, second_last=0.8, last=0.3,
                         slow_every=100, sigma=0.25):
    """Worker times such that, of n workers starting together, the
    second-to-last gradient arrives within `within_s` with probability
    `second_last` and the last with probability `last`.

    Independent identically distributed times cannot do it: then P(last <=
    x) = F^n fixes F(x) and P(second-to-last <= x) = F^n + n F^(n-1) (1 - F)
    (0.66 for the paper's 0.3), not a free number. The paper's 0.8 says a
    single late gradient is far likelier than that: a few machines are slow.
    So: one machine in `slow_every` is slow. Every machine's time is
    lognormal with log-standard deviation `sigma` (an assumption); the two
    probabilities fix the chance p_fast that a normal machine and p_slow
    that a slow one exceeds `within_s`, and those fix the two medians.
    Returns a dict with the parameters and a `PerWorker` distribution for
    `n` workers (`dist`)."""
    slow = n // slow_every
    if not 0 < last < second_last < 1:
        raise ValueError("need 0 < last < second_last < 1, got %r, %r"
                         % (last, second_last))
    if slow == 0:
        raise ValueError("n=%d with slow_every=%d has no slow machine"
                         % (n, slow_every))

    def p_slow_for(p_fast):
        # P(0 late) = last fixes p_slow given p_fast.
        s0 = last / (1 - p_fast) ** (n - slow)
        return 1 - s0 ** (1.0 / slow) if s0 <= 1 else None

    def excess(p_fast):
        p_slow = p_slow_for(p_fast)
        if p_slow is None:
            return 1.0
        return count_within_probs(p_fast, p_slow, n, slow)[1] - second_last

    # excess decreases as p_fast grows (more fast machines late); p_fast=0
    # gives P(<=1 late) = 1 with one slow machine.
    hi = 1 - last ** (1.0 / (n - slow))
    p_fast = _bisect(lambda p: -excess(p), 0.0, hi)
    p_slow = p_slow_for(p_fast)
    z = statistics.NormalDist().inv_cdf
    fast_median = within_s / math.exp(sigma * z(1 - p_fast))
    slow_median = within_s / math.exp(sigma * z(1 - p_slow))
    fast, slow_dist = LogNormal(fast_median, sigma), LogNormal(slow_median,
                                                               sigma)
    dists = [slow_dist if (w + 1) % slow_every == 0 else fast
             for w in range(n)]
    return {"n": n, "within_s": within_s, "second_last": second_last,
            "last": last, "slow_every": slow_every, "sigma": sigma,
            "p_fast_late": p_fast, "p_slow_late": p_slow,
            "fast_median_s": fast_median, "slow_median_s": slow_median,
            "dist": PerWorker(dists)}


def paper_tail(num_workers=100, **kwargs):
    """The calibrated heavy tail laid out over `num_workers` workers (one
    slow machine per `slow_every`)."""
    cal = calibrate_paper_tail(**kwargs)
    fast, slow = cal["dist"].dists[0], cal["dist"].dists[-1]
    every = cal["slow_every"]
    return PerWorker([slow if (w + 1) % every == 0 else fast
                      for w in range(num_workers)])


# -- pauses ------------------------------------------------------------------

def sample_spec_distribution(dist, rng):
    """One draw, in seconds, from a cluster-spec distribution (the
    launcher's straggler injection draws with this too)."""
    kind = dist["distribution"]
    if kind == "fixed":
        return float(dist["value"])
    if kind == "uniform":
        return rng.uniform(dist["low"], dist["high"])
    if kind == "exponential":
        return rng.expovariate(1.0 / dist["mean"]) if dist["mean"] > 0 else 0.0
    if kind == "lognormal":
        return rng.lognormvariate(math.log(dist["median"]), dist["sigma"])
    raise ValueError("unknown distribution %r" % kind)


def pauses_from_spec(entries, duration_s, seed=0):
    """[(worker, start, end)] from cluster-spec straggler entries, drawn the
    way the launcher draws them (run `every_s`, pause `pause_s`)."""
    out = []
    for i, entry in enumerate(entries):
        worker = int(entry["task"].rpartition("-")[2])
        rng = random.Random(entry.get("seed", 0) + 1000 * seed + i)
        t = entry.get("start_after_s", 0.0)
        while True:
            t += sample_spec_distribution(entry["every_s"], rng)
            if t >= duration_s:
                break
            length = sample_spec_distribution(entry["pause_s"], rng)
            out.append((worker, t, t + length))
            t += length
    return sorted(out, key=lambda p: p[1])


# -- the simulator -------------------------------------------------------------

@dataclasses.dataclass
class Cluster:
    """What is simulated. `replicas_to_aggregate=None` or mode="async"
    simulates asynchronous training."""
    num_workers: int
    worker_times: object
    replicas_to_aggregate: int = None
    mode: str = "sync"
    latency_s: float = 0.0
    push_cost_s: float = 0.0
    apply_cost_s: float = 0.0
    wake_s: float = 0.0
    workers_per_machine: int = 1
    cores_per_machine: float = 1.0
    pauses: tuple = ()
    quorum_policy: object = None
    poll_s: float = 0.05
    shared_wake_queue: bool = False
    lost_wakeups: int = 0     # workers that start robbed (shared queue)

    def __post_init__(self):
        if self.mode not in ("sync", "async"):
            raise ValueError("mode must be 'sync' or 'async', got %r"
                             % self.mode)
        if self.replicas_to_aggregate is None:
            self.replicas_to_aggregate = self.num_workers
        if not 1 <= self.replicas_to_aggregate <= self.num_workers:
            raise ValueError("replicas_to_aggregate must be between 1 and "
                             "num_workers (%d), got %d"
                             % (self.num_workers, self.replicas_to_aggregate))
        for name in ("latency_s", "push_cost_s", "apply_cost_s", "wake_s"):
            if getattr(self, name) < 0:
                raise ValueError("%s must be >= 0" % name)
        if self.lost_wakeups and not (
                self.shared_wake_queue
                and 0 <= self.lost_wakeups < self.num_workers):
            raise ValueError("lost_wakeups needs shared_wake_queue and "
                             "fewer than num_workers")
        if self.workers_per_machine < 1 or self.cores_per_machine <= 0:
            raise ValueError("need workers_per_machine >= 1 and "
                             "cores_per_machine > 0")


@dataclasses.dataclass
class Result:
    closes: list          # time of each update
    quorums: list         # gradients averaged by each update
    arrivals: list        # per closed step: its admitted pushes' offsets
    pushes: int
    admitted: int
    duplicates: int
    compute_times: list   # per push: ready -> computed (pauses included)
    push_times: list      # per push: ready -> decided at the PS
    duration_s: float

    @property
    def updates(self):
        return len(self.closes)

    @property
    def updates_per_s(self):
        """Between the first and the last update, as analysis.update_rate."""
        if len(self.closes) < 2 or self.closes[-1] <= self.closes[0]:
            return None
        return (len(self.closes) - 1) / (self.closes[-1] - self.closes[0])

    @property
    def step_times(self):
        """Update intervals (the first one measured from time 0)."""
        return [b - a for a, b in zip([0.0] + self.closes[:-1], self.closes)]

    @property
    def mean_step_s(self):
        rate = self.updates_per_s
        return 1.0 / rate if rate else None

    @property
    def wasted_share(self):
        return (self.pushes - self.admitted) / self.pushes if self.pushes \
            else None

    def summary(self):
        return {"updates": self.updates, "updates_per_s": self.updates_per_s,
                "mean_step_s": self.mean_step_s,
                "wasted_share": self.wasted_share,
                "mean_quorum": (statistics.fmean(self.quorums)
                                if self.quorums else None),
                "mean_compute_s": (statistics.fmean(self.compute_times)
                                   if self.compute_times else None),
                "mean_push_s": (statistics.fmean(self.push_times)
                                if self.push_times else None)}


class _Sim:
    # Event kinds, in tie-break order at equal times.
    RESUME, PAUSE, DONE, ARRIVE, SERVED, READY, POLL, TOKENS, DEQUEUE = \
        range(9)

    def __init__(self, cluster, seed):
        self.c = cluster
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events = []
        self.seq = 0
        n = cluster.num_workers
        self.sync = cluster.mode == "sync"
        # Processor sharing per machine.
        self.machine = [w // cluster.workers_per_machine for w in range(n)]
        machines = self.machine[-1] + 1
        self.busy = [dict() for _ in range(machines)]   # worker -> remaining
        self.last = [0.0] * machines
        self.gen = [0] * n
        self.frozen = {}      # paused mid-compute: worker -> remaining work
        self.paused = [0] * n
        self.ready_at = [0.0] * n
        self.tag = [0] * n
        # PS.
        self.queue = collections.deque()
        self.ps_busy = False
        # Protocol.
        self.step = 0
        self.count = 0
        self.admitted = []
        self.waiting = []
        self.lowered = None   # (step, quorum)
        self.tokens = 0       # shared wake queue: tokens not yet taken
        self.dequeuers = []   # workers blocked on it, in order
        self.dequeue_due = set()  # paused before issuing their dequeue
        self.open_at = 0.0
        self.offsets = []
        self.closes, self.quorums, self.arrivals = [], [], []
        self.pushes = 0
        self.admitted_pushes = 0
        self.duplicates = 0
        self.compute_times = []
        self.push_times = []
        policy = cluster.quorum_policy
        self.step_log = (steplog.StepArrivals()
                         if hasattr(policy, "observe") else None)

    def push_event(self, t, kind, data=None):
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, data))

    # -- processor sharing -------------------------------------------------

    def _rate(self, m):
        k = len(self.busy[m])
        return min(1.0, self.c.cores_per_machine / k) if k else 1.0

    def _advance(self, m):
        rate = self._rate(m)
        elapsed = self.now - self.last[m]
        if elapsed > 0:
            for w in self.busy[m]:
                self.busy[m][w] -= elapsed * rate
        self.last[m] = self.now

    def _reschedule(self, m):
        rate = self._rate(m)
        for w, remaining in self.busy[m].items():
            self.gen[w] += 1
            self.push_event(self.now + max(0.0, remaining) / rate, self.DONE,
                            (w, self.gen[w]))

    def _set_busy(self, w, remaining):
        m = self.machine[w]
        self._advance(m)
        if remaining is None:
            remaining = self.busy[m].pop(w)
        else:
            self.busy[m][w] = remaining
        self._reschedule(m)
        return remaining

    # -- worker ------------------------------------------------------------

    def ready(self, w, version):
        """Worker w has the parameters of `version` and starts computing."""
        self.tag[w] = version
        self.ready_at[w] = self.now
        work = self.c.worker_times.sample(w, self.rng)
        if self.paused[w]:
            self.frozen[w] = work
        else:
            self._set_busy(w, work)

    def on_done(self, w, gen):
        if gen != self.gen[w] or w not in self.busy[self.machine[w]]:
            return
        self._set_busy(w, None)
        self.compute_times.append(self.now - self.ready_at[w])
        self.push_event(self.now + self.c.latency_s, self.ARRIVE,
                        (w, self.tag[w]))

    def on_pause(self, w):
        self.paused[w] += 1
        if self.paused[w] == 1 and w in self.busy[self.machine[w]]:
            self.frozen[w] = self._set_busy(w, None)
            self.gen[w] += 1

    def on_resume(self, w):
        self.paused[w] -= 1
        if self.paused[w] == 0 and w in self.frozen:
            self._set_busy(w, self.frozen.pop(w))
        if self.paused[w] == 0 and w in self.dequeue_due:
            self.dequeue_due.discard(w)
            self.on_dequeue(w)

    # -- the shared wake queue (as implemented) ------------------------------

    def on_dequeue(self, w):
        if self.paused[w]:
            self.dequeue_due.add(w)   # issued once it runs again
            return
        self.dequeuers.append(w)
        self._hand_out_tokens()

    def on_tokens(self, count):
        self.tokens += count
        self._hand_out_tokens()

    def _hand_out_tokens(self):
        """Tokens to the blocked dequeues in order (the PS serves them, the
        worker may be paused); each takes the version published now (the
        protocol retags after the dequeue)."""
        while self.tokens and self.dequeuers:
            self.tokens -= 1
            self.ready(self.dequeuers.pop(0), self.step)

    # -- parameter server --------------------------------------------------

    def on_arrive(self, item):
        self.queue.append(item)
        self._serve()

    def _serve(self):
        if self.ps_busy or not self.queue:
            return
        item = self.queue.popleft()
        self.ps_busy = True
        if item is None:   # the coordinator closes a lowered step
            cost, after = self._coordinator_close()
        elif self.sync:
            cost, after = self._sync_push(*item)
        else:
            cost, after = self._async_push(*item)
        self.push_event(self.now + cost, self.SERVED, after)

    def on_served(self, after):
        self.ps_busy = False
        for delay, w, version in after:
            if delay <= 0:
                self.ready(w, version)
            else:
                self.push_event(self.now + delay, self.READY, (w, version))
        self._serve()

    def _quorum(self):
        n = self.c.replicas_to_aggregate
        if self.lowered and self.lowered[0] == self.step:
            return self.lowered[1]
        return n

    def _close(self, t_end):
        """Apply the open step (ends at t_end); returns the waiters' wake-ups
        as (delay after the service, worker, version)."""
        self.closes.append(t_end)
        self.quorums.append(self.count)
        self.arrivals.append(self.offsets)
        self.step += 1
        self.count, self.admitted, self.offsets = 0, [], []
        self.open_at = t_end
        waiters, self.waiting = self.waiting, []
        if self.c.shared_wake_queue:
            if waiters:
                self.push_event(t_end + self.c.wake_s, self.TOKENS,
                                len(waiters))
            return []
        return [(self.c.wake_s, w, self.step) for w in waiters]

    def _sync_push(self, w, tag):
        self.pushes += 1
        self.push_times.append(self.now - self.ready_at[w])
        cost = self.c.push_cost_s
        if tag != self.step:
            # Dropped as stale; retagged with the open step at once.
            self._log("dropped_stale", tag)
            return cost, [(0.0, w, self.step)]
        if w in self.admitted:
            # Woken by another's token: a second push to the same step.
            self.duplicates += 1
            self._log("dropped_duplicate", tag)
            return cost, [(0.0, w, self.step)]
        self.admitted_pushes += 1
        self.count += 1
        self.admitted.append(w)
        self.offsets.append(self.now - self.open_at)
        if self.count >= self._quorum():
            self._log("admitted_closed", tag)
            cost += self.c.apply_cost_s
            wakes = self._close(self.now + cost)
            return cost, [(0.0, w, self.step)] + wakes
        self._log("admitted", tag)
        self.waiting.append(w)
        if self.c.shared_wake_queue:
            self.push_event(self.now + cost, self.DEQUEUE, w)
        return cost, []

    def _async_push(self, w, tag):  # pylint: disable=unused-argument
        self.pushes += 1
        self.push_times.append(self.now - self.ready_at[w])
        self.admitted_pushes += 1
        cost = self.c.push_cost_s + self.c.apply_cost_s
        self.closes.append(self.now + cost)
        self.quorums.append(1)
        self.step += 1
        return cost, [(0.0, w, self.step)]

    def _coordinator_close(self):
        if self.count and self.count >= self._quorum():
            self._log("policy_closed", self.step)
            cost = self.c.apply_cost_s
            return cost, self._close(self.now + cost)
        return 0.0, []

    # -- quorum policy -----------------------------------------------------

    def _log(self, outcome, tag):
        """A PS log row, for a policy that learns from them; admitted_rank
        is the open step's count (what the close rows carry)."""
        if self.step_log is None:
            return
        for closed in self.step_log.add(dict(
                step=self.step, tag=tag, outcome=outcome,
                arrived_at=self.now, admitted_rank=self.count)):
            self.c.quorum_policy.observe(closed)

    def on_poll(self):
        policy = self.c.quorum_policy
        if self.lowered is None or self.lowered[0] != self.step:
            decision = policy.decide(quorum_lib.OpenStep(
                step=self.step, count=self.count,
                admitted=tuple(sorted(self.admitted)),
                open_for_s=self.now - self.open_at,
                replicas_to_aggregate=self.c.replicas_to_aggregate,
                total_num_replicas=self.c.num_workers, now=self.now,
                waiting_for_s=(self.now - self.open_at - self.offsets[0]
                               if self.offsets else 0.0),
                opened_at=(self.step_log.opened_at(self.step)
                           if self.step_log is not None else None)))
            if decision is not None and decision.quorum is not None:
                self.lowered = (self.step, max(1, min(
                    decision.quorum, self.c.replicas_to_aggregate)))
                if self.count >= self.lowered[1]:
                    self.on_arrive(None)
        self.push_event(self.now + self.c.poll_s, self.POLL)

    # -- main loop ---------------------------------------------------------

    def run(self, updates=None, duration_s=None):
        for w, start, end in self.c.pauses:
            self.push_event(start, self.PAUSE, w)
            self.push_event(end, self.RESUME, w)
        lost = self.c.num_workers - self.c.lost_wakeups
        for w in range(self.c.num_workers):
            if w < lost:
                self.ready(w, 0)
            else:   # blocked on the shared queue, registered nowhere
                self.dequeuers.append(w)
        policy = self.c.quorum_policy
        if (self.sync and policy is not None
                and not isinstance(policy, quorum_lib.FixedQuorum)):
            self.push_event(self.c.poll_s, self.POLL)
        handlers = {self.RESUME: self.on_resume, self.PAUSE: self.on_pause,
                    self.ARRIVE: self.on_arrive, self.SERVED: self.on_served,
                    self.TOKENS: self.on_tokens,
                    self.DEQUEUE: self.on_dequeue}
        while self.events:
            t, kind, _, data = heapq.heappop(self.events)
            if duration_s is not None and t > duration_s:
                break
            self.now = t
            if kind == self.DONE:
                self.on_done(*data)
            elif kind == self.READY:
                self.ready(*data)
            elif kind == self.POLL:
                self.on_poll()
            else:
                handlers[kind](data)
            if updates is not None and len(self.closes) >= updates:
                break
        return Result(self.closes[:updates] if updates else self.closes,
                      self.quorums[:updates] if updates else self.quorums,
                      self.arrivals, self.pushes, self.admitted_pushes,
                      self.duplicates,
                      self.compute_times, self.push_times, self.now)


def simulate(cluster, updates=None, duration_s=None, seed=0):
    """Run `cluster` until `updates` updates or `duration_s` seconds."""
    if updates is None and duration_s is None:
        raise ValueError("give updates or duration_s")
    return _Sim(cluster, seed).run(updates, duration_s)


# -- closed forms, for checks ------------------------------------------------

def expected_exp_order_stat(k, n, rate):
    """E[k-th smallest of n iid Exp(rate)] = sum_{i<k} 1/((n-i) rate)."""
    return sum(1.0 / ((n - i) * rate) for i in range(k))


def var_exp_order_stat(k, n, rate):
    """Its variance: the spacings are independent exponentials."""
    return sum(1.0 / ((n - i) * rate) ** 2 for i in range(k))


def order_stat_samples(dist, n, rounds, seed=0):
    """`rounds` draws of n workers starting together, each sorted: the
    arrival order of one step without carry-over between steps."""
    rng = random.Random(seed)
    return [sorted(dist.sample(w, rng) for w in range(n))
            for _ in range(rounds)]


def fraction_within(samples, k, x):
    """Share of rounds whose k-th arrival (1-based) is within x."""
    return sum(1 for s in samples if s[k - 1] <= x) / len(samples)

