"""Quorum policies: how many fresh pushes close a step, decided per step.

The quorum is a runtime value held on the protocol PS. A policy runs on the
coordinator (in the step watchdog), looks at the open step and may lower the
quorum of that step (it returns to `replicas_to_aggregate` once the step
closes) or fail the run. Policies never raise the quorum above
`replicas_to_aggregate`, so no step ever averages more than N pushes.
"""
import collections
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class OpenStep:
    """What the watchdog knows of the open step."""
    step: int                 # version the open step aggregates
    count: int                # fresh pushes admitted so far
    admitted: tuple           # worker indices admitted so far
    open_for_s: float         # seconds since the coordinator saw it open
    replicas_to_aggregate: int
    total_num_replicas: int
    now: float = None         # the caller's clock (seconds), if it has one
    # Seconds since its first fresh gradient was seen (0 while it has none):
    # what a quorum timeout counts, so that workers still starting up
    # (tracing, restoring) are not taken for stragglers.
    waiting_for_s: float = 0.0
    # When the step opened, exactly (the PS log's close of the step before),
    # on the clock of `now`: the PS wall clock, time.time() on its host. None
    # if unknown; `open_for_s` is then all there is.
    opened_at: float = None


@dataclasses.dataclass(frozen=True)
class Decision:
    quorum: int = None        # lower the open step's quorum to this
    fail: str = None          # stop the run with this message


class QuorumPolicy:
    """Base: fixed N, never times out."""

    name = "fixed"

    def decide(self, open_step):  # pylint: disable=unused-argument
        return None

    def get_config(self):
        return {"policy": self.name}


class FixedQuorum(QuorumPolicy):
    """Every step waits for exactly N fresh pushes (the paper's protocol)."""


class TimeoutThenDegrade(QuorumPolicy):
    """`quorum_timeout_s` after the open step's first fresh gradient, with at
    least `min_replicas_to_aggregate` pushes admitted, close the step with
    what it has (logged as degraded)."""

    name = "timeout_degrade"

    def __init__(self, min_replicas_to_aggregate, quorum_timeout_s):
        if min_replicas_to_aggregate < 1:
            raise ValueError("min_replicas_to_aggregate must be at least 1, "
                             "got %d" % min_replicas_to_aggregate)
        if quorum_timeout_s <= 0:
            raise ValueError("quorum_timeout_s must be positive, got %r"
                             % quorum_timeout_s)
        self.min_replicas_to_aggregate = int(min_replicas_to_aggregate)
        self.quorum_timeout_s = float(quorum_timeout_s)

    def decide(self, open_step):
        if (open_step.waiting_for_s >= self.quorum_timeout_s
                and self.min_replicas_to_aggregate <= open_step.count
                < open_step.replicas_to_aggregate):
            return Decision(quorum=open_step.count)
        return None

    def get_config(self):
        return {"policy": self.name,
                "min_replicas_to_aggregate": self.min_replicas_to_aggregate,
                "quorum_timeout_s": self.quorum_timeout_s}


class TimeoutThenFail(QuorumPolicy):
    """`quorum_timeout_s` after the open step's first fresh gradient without
    a quorum, stop with an error naming the workers that have not
    contributed to the open step."""

    name = "timeout_fail"

    def __init__(self, quorum_timeout_s):
        if quorum_timeout_s <= 0:
            raise ValueError("quorum_timeout_s must be positive, got %r"
                             % quorum_timeout_s)
        self.quorum_timeout_s = float(quorum_timeout_s)

    def decide(self, open_step):
        if (open_step.count == 0
                or open_step.waiting_for_s < self.quorum_timeout_s):
            return None
        missing = [w for w in range(open_step.total_num_replicas)
                   if w not in open_step.admitted]
        return Decision(fail=(
            "ps_sync: step %d has %d of %d fresh gradients %.1f s after "
            "its first "
            "(quorum_timeout_s=%g); workers that have not contributed: %s. "
            "More than the %d backup workers are dead or stuck."
            % (open_step.step, open_step.count,
               open_step.replicas_to_aggregate, open_step.waiting_for_s,
               self.quorum_timeout_s, ", ".join("worker-%d" % w
                                                for w in missing),
               open_step.total_num_replicas
               - open_step.replicas_to_aggregate)))

    def get_config(self):
        return {"policy": self.name, "quorum_timeout_s": self.quorum_timeout_s}


class AdaptiveQuorum(QuorumPolicy):
    """Each step, wait for the number of gradients k that maximises
    expected progress per second, gain(k) / E[time to the k-th gradient],
    with gain(k) = k ** gain_exponent (1: every gradient is worth the same,
    i.e. maximise admitted gradients per second; below 1: diminishing
    returns of larger batches). Backups become dynamic, in the spirit of
    Dynamic Backup Workers (Xu, Neglia, Sebastianelli 2020).

    It keeps, over the last `window` steps, the time after each step opened
    at which its k-th gradient arrived. Given `observe` (the watchdog and
    the simulator call it with steplog.ClosedStep records of the PS log),
    those times are exact, and include the gradients that came after the
    step closed; a gradient still missing when the record was finalised
    counts as arriving then (a lower bound). Without `observe` it only has
    the open step's admitted count at each `decide` (a poll): the time each
    count was first seen, and the time the step closed, which misses every
    step that opens and closes between two polls. The quorum is lowered to
    the current count once that count reaches the best k; it stays between
    `min_replicas_to_aggregate` and N. Counts above the quorum it lowers to
    are seen only if they come before the record is final, so every
    `explore_every`-th step waits for `explore_span` more (N if None), and
    the first `warmup_steps` observed steps wait for N. A step open `slack`
    times longer than the expected time to the largest count seen (more
    than b stragglers) closes with what it has once it has at least the
    minimum.
    """

    name = "adaptive"

    def __init__(self, min_replicas_to_aggregate, window=50, explore_every=10,
                 warmup_steps=5, gain_exponent=1.0, slack=3.0,
                 explore_span=5):
        if min_replicas_to_aggregate < 1:
            raise ValueError("min_replicas_to_aggregate must be at least 1, "
                             "got %d" % min_replicas_to_aggregate)
        if window < 1 or explore_every < 1 or warmup_steps < 0:
            raise ValueError("need window >= 1, explore_every >= 1 and "
                             "warmup_steps >= 0, got %r, %r, %r"
                             % (window, explore_every, warmup_steps))
        if not 0 < gain_exponent <= 1:
            raise ValueError("gain_exponent must be in (0, 1], got %r"
                             % gain_exponent)
        if explore_span is not None and explore_span < 1:
            raise ValueError("explore_span must be at least 1 (or None), "
                             "got %r" % explore_span)
        if slack is not None and slack <= 1:
            raise ValueError("slack must be above 1 (or None), got %r" % slack)
        self.min_replicas_to_aggregate = int(min_replicas_to_aggregate)
        self.window = int(window)
        self.explore_every = int(explore_every)
        self.warmup_steps = int(warmup_steps)
        self.gain_exponent = float(gain_exponent)
        self.slack = None if slack is None else float(slack)
        self.explore_span = None if explore_span is None else int(explore_span)
        self._history = collections.deque(maxlen=self.window)
        self._step = None
        self._opened = None
        self._seen = {}
        self._lowered_to = None
        self._times = {}
        self._target = None
        self._exact = False   # observe() feeds the history
        self._n = None
        self.decisions = []   # (step, quorum) of every lowering

    def observe(self, closed):
        """Learn one closed step's exact arrivals (a steplog.ClosedStep);
        from the first call on, polls no longer feed the history."""
        if not self._exact:
            self._exact = True
            self._history.clear()
        seen = dict(enumerate(closed.offsets, 1))
        for k in range(len(closed.offsets) + 1, (self._n or 0) + 1):
            seen[k] = closed.final_s
        self._history.append(seen)
        self._refresh()

    def _refresh(self):
        # Once per step, not per poll: the window can be long.
        self._times = self.expected_times()
        self._target = (None if self._n is None
                        else self.best_quorum(self._n, self._times))

    def _finish_step(self, open_step, now):
        """Record the step that just closed (it closed when this one
        opened), if it was the one before and polls feed the history."""
        opened = now - open_step.open_for_s
        if (not self._exact and self._step is not None
                and open_step.step == self._step + 1):
            closed_with = self._lowered_to or open_step.replicas_to_aggregate
            seen = dict(self._seen)
            seen[closed_with] = opened - self._opened
            self._history.append(seen)
            self._refresh()
        self._step = open_step.step
        self._opened = opened
        self._seen = {}
        self._lowered_to = None

    def expected_times(self):
        """{k: mean time to the k-th gradient} over the window."""
        sums = collections.defaultdict(float)
        counts = collections.Counter()
        for seen in self._history:
            for k, t in seen.items():
                sums[k] += t
                counts[k] += 1
        return {k: sums[k] / counts[k] for k in sums}

    def best_quorum(self, n, times=None):
        """The k in [min, n] with the best gain per expected second, among
        the counts observed; None before any step was observed."""
        times = self.expected_times() if times is None else times
        best, best_score = None, None
        for k in range(min(self.min_replicas_to_aggregate, n), n + 1):
            t = times.get(k)
            if t is None:
                continue
            score = k ** self.gain_exponent / max(t, 1e-9)
            if best_score is None or score > best_score:
                best, best_score = k, score
        return best

    def decide(self, open_step):
        now = open_step.now
        if now is None:
            now = time.time()
        if open_step.replicas_to_aggregate != self._n:
            self._n = open_step.replicas_to_aggregate
            self._refresh()
        if open_step.step != self._step:
            self._finish_step(open_step, now)
        if open_step.opened_at is not None:
            self._opened = open_step.opened_at
        for c in range(1, open_step.count + 1):
            self._seen.setdefault(c, now - self._opened)
        n = open_step.replicas_to_aggregate
        count = open_step.count
        if (self._lowered_to is not None or count >= n
                or count < self.min_replicas_to_aggregate
                or len(self._history) < self.warmup_steps):
            return None
        if self.slack is not None and self._times:
            longest = self._times[max(self._times)]
            if now - self._opened > self.slack * longest:
                return self._lower(open_step.step, count)
        target = self._target
        if target is None:
            return None
        if open_step.step % self.explore_every == 0:
            if self.explore_span is None:
                return None
            target = min(n, target + self.explore_span)
        if count >= target:
            return self._lower(open_step.step, count)
        return None

    def _lower(self, step, quorum):
        self._lowered_to = quorum
        self.decisions.append((step, quorum))
        return Decision(quorum=quorum)

    def get_config(self):
        return {"policy": self.name,
                "min_replicas_to_aggregate": self.min_replicas_to_aggregate,
                "window": self.window, "explore_every": self.explore_every,
                "warmup_steps": self.warmup_steps,
                "gain_exponent": self.gain_exponent, "slack": self.slack,
                "explore_span": self.explore_span}


def from_config(config):
    if config is None:
        return FixedQuorum()
    config = dict(config)
    name = config.pop("policy", "fixed")
    policies = {"fixed": FixedQuorum, "timeout_degrade": TimeoutThenDegrade,
                "timeout_fail": TimeoutThenFail, "adaptive": AdaptiveQuorum}
    if name not in policies:
        raise ValueError("unknown quorum policy %r; expected one of %s"
                         % (name, ", ".join(sorted(policies))))
    return policies[name](**config)
