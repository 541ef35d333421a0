"""The protocol PS's telemetry rows, decoded, and turned into exact per-step
arrival times (pure Python: the watchdog, telemetry and the simulator share
it without TensorFlow).

Row outcomes and columns are defined here; ps_sync.protocol writes them.
"""
import collections
import dataclasses

# Push outcomes (telemetry records and per-worker counters).
DROPPED_STALE = 0      # computed on an older version
DROPPED_DUPLICATE = 1  # this worker already contributed to the open step
ADMITTED = 2           # counted in the open step, which stays open
ADMITTED_CLOSED = 3    # counted, and completed the quorum: step applied
DROPPED_LATE = 4       # fresh, but the step's quorum was already full when
                       # it asked to send (not sent), or when it arrived
                       # (while a checkpoint holds the step open)
POLICY_CLOSED = 5      # not a push outcome: a step closed by a push that did
                       # not count in it, or by the coordinator (a lowered
                       # quorum, or the end of a checkpoint hold)
OUTCOME_NAMES = ("dropped_stale", "dropped_duplicate", "admitted",
                 "admitted_closed", "dropped_late", "policy_closed")
NUM_PUSH_OUTCOMES = 5

# Telemetry ring buffer columns, one row per push (and per policy close).
LOG_FIELDS = ("step", "tag", "worker", "ready_at", "computed_at",
              "arrived_at", "outcome", "admitted_rank", "quorum")

SCHEMA_VERSION = 1
_CLOSES = ("admitted_closed", "policy_closed")
_ADMITTED = ("admitted", "admitted_closed")


def push_record(row, run_id=None):
    """One telemetry row (LOG_FIELDS order) as a push record dict."""
    fields = dict(zip(LOG_FIELDS, row))
    return {"type": "push", "v": SCHEMA_VERSION, "run_id": run_id,
            "step": int(fields["step"]), "tag": int(fields["tag"]),
            "worker": int(fields["worker"]),
            "ready_at": float(fields["ready_at"]),
            "computed_at": float(fields["computed_at"]),
            "arrived_at": float(fields["arrived_at"]),
            "outcome": OUTCOME_NAMES[int(fields["outcome"])],
            "admitted_rank": int(fields["admitted_rank"]),
            "quorum": int(fields["quorum"])}


@dataclasses.dataclass(frozen=True)
class ClosedStep:
    """Exact arrivals of one closed step, on the PS clock."""
    step: int
    opened_at: float          # when step - 1 closed
    closed_at: float
    quorum: int               # gradients it closed with
    offsets: tuple            # every fresh gradient's arrival - opened_at,
                              # ascending: offsets[k - 1] is the k-th
    final_s: float            # record finalised this long after opening:
                              # a gradient not in `offsets` came later


class StepArrivals:
    """Consumes push records in log order; emits ClosedStep records.

    Step s opened when s - 1 closed (the arrived_at of s - 1's
    admitted_closed or policy_closed row). Its fresh gradients are its
    admitted pushes and the pushes tagged s dropped after it closed (stale
    once the next step is open, or late during a hold): those give the time
    to the (q+1)-th, ... gradient without waiting for it. A step's record is
    final once a later step closes: fresh pushes for it arriving after that
    are ignored, so a very slow straggler shows only as a gradient later
    than `final_s`.
    """

    def __init__(self):
        self._closed_at = {}    # step -> close time (the last two kept)
        self._pending = {}      # closed, not final: step -> closing record
        self._fresh = collections.defaultdict(list)  # step -> arrivals

    def reset(self):
        """Forget everything (rows were lost: gaps would mislead)."""
        self._closed_at.clear()
        self._pending.clear()
        self._fresh.clear()

    def add(self, record):
        """Feed one record (only step, tag, outcome, arrived_at and
        admitted_rank are read); returns the ClosedSteps it finalises."""
        outcome, step, tag = (record["outcome"], record["step"],
                              record["tag"])
        if outcome in _ADMITTED or outcome == "dropped_late":
            self._fresh[step].append(record["arrived_at"])
        elif outcome == "dropped_stale" and tag in self._pending:
            self._fresh[tag].append(record["arrived_at"])
        if outcome not in _CLOSES:
            return []
        done = [self._finish(s, record["arrived_at"])
                for s in sorted(self._pending) if s < step]
        self._pending[step] = record
        self._closed_at[step] = record["arrived_at"]
        # Step s + 1 opened when s closed: keep s - 1 to finalise s.
        for old in [s for s in self._closed_at if s < step - 1]:
            del self._closed_at[old]
        for old in [s for s in self._fresh if s < step]:
            del self._fresh[old]
        return [c for c in done if c is not None]

    def _finish(self, step, now):
        close = self._pending.pop(step)
        opened = self._closed_at.get(step - 1)
        if opened is None:
            return None
        return ClosedStep(
            step=step, opened_at=opened, closed_at=close["arrived_at"],
            quorum=close["admitted_rank"],
            offsets=tuple(sorted(t - opened
                                 for t in self._fresh.get(step, ()))),
            final_s=now - opened)

    def opened_at(self, step):
        """When `step` opened (step - 1's close), or None if not seen."""
        return self._closed_at.get(step - 1)
