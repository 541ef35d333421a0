"""Telemetry: one record per push and one per applied step, as JSON lines.

The protocol PS records every push (dropped ones included) in a ring buffer
inside the step's critical section; the coordinator drains it into
`<dir>/pushes.jsonl` and derives `<dir>/steps.jsonl`. Times are Unix seconds
from `tf.timestamp()` on the task that took them: `ready_at` and
`computed_at` on the worker, `arrived_at` on the protocol PS (one clock on one
machine; across machines, as synchronised as the hosts' clocks).

Schema version 1. Push record:
  type="push", v, run_id, step (open step at arrival), tag (version the
  gradient was computed on), worker, ready_at (worker got that version),
  computed_at (gradient ready, push starts), arrived_at (admission decided),
  outcome (admitted | admitted_closed | dropped_stale | dropped_duplicate),
  admitted_rank (1..N arrival order in the step, 0 if dropped), quorum.
Step record:
  type="step", v, run_id, step (version the update was computed on; the
  update makes version step+1), closed_at, opened_at (first admitted
  arrival), admitted (workers in arrival order), quorum, degraded (fewer than
  replicas_to_aggregate), closed_by (worker whose push closed it).
"""
import collections
import itertools
import json
import os
import threading

from absl import logging

from ps_sync import steplog

SCHEMA_VERSION = steplog.SCHEMA_VERSION
PUSHES_FILE = "pushes.jsonl"
STEPS_FILE = "steps.jsonl"
# Records of each kind kept in memory (the files keep them all): a long run
# makes millions (paper scale: 150 workers, 10 pushes/s each), about 1 KB
# apiece as Python dicts.
IN_MEMORY_RECORDS = 50000


class TelemetryWriter:
    """Drains the protocol's telemetry on the coordinator."""

    def __init__(self, protocol, directory=None, interval_s=0.5,
                 tensorboard_dir=None, in_memory=None):
        self._protocol = protocol
        self._directory = directory
        self._interval_s = interval_s
        self._next = 0
        self._open = collections.defaultdict(list)  # step -> admitted pushes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The latest records; `since` reads them by their running number.
        in_memory = in_memory or IN_MEMORY_RECORDS
        self.pushes = collections.deque(maxlen=in_memory)
        self.steps = collections.deque(maxlen=in_memory)
        self._totals = {"pushes": 0, "steps": 0}
        self.records_lost = 0
        self._files = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            self._files = (open(os.path.join(directory, PUSHES_FILE), "a"),
                           open(os.path.join(directory, STEPS_FILE), "a"))
        self._tensorboard_dir = tensorboard_dir
        self._summary_writer = None
        self._counts = collections.Counter()
        self._last_closed_at = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="ps_sync-telemetry")

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.drain()
        if self._files:
            for f in self._files:
                f.close()
            self._files = None

    def _run(self):
        while not self._stop.wait(self._interval_s):
            try:
                self.drain()
            except Exception as e:  # pylint: disable=broad-except
                logging.log_every_n(logging.WARNING,
                                    "ps_sync telemetry: %s", 20, e)

    def drain(self):
        """Read every new record from the PS; returns how many."""
        with self._lock:
            rows, self._next, lost = self._protocol.read_log(self._next)
            if lost:
                self.records_lost += lost
                logging.warning("ps_sync telemetry: %d records overwritten "
                                "before they were read", lost)
            run_id = self._protocol.run_id
            pushes, steps = [], []
            for row in rows:
                record = steplog.push_record(row, run_id)
                if record["outcome"] == "policy_closed":
                    steps.append(self._step_record(record, record["worker"]))
                    continue
                pushes.append(record)
                if record["outcome"].startswith("admitted"):
                    self._open[record["step"]].append(record)
                if record["outcome"] == "admitted_closed":
                    steps.append(self._step_record(record, record["worker"]))
            self.pushes.extend(pushes)
            self.steps.extend(steps)
            self._totals["pushes"] += len(pushes)
            self._totals["steps"] += len(steps)
            self._write_scalars(pushes, steps)
            if self._files:
                for f, records in zip(self._files, (pushes, steps)):
                    f.writelines(json.dumps(r) + "\n" for r in records)
                    f.flush()
            return len(rows)

    def since(self, kind, cursor):
        """(records, next cursor): the `kind` ("pushes" or "steps") records
        from running number `cursor` on that are still in memory (older
        ones only in the files). Start with cursor 0."""
        with self._lock:
            records, total = getattr(self, kind), self._totals[kind]
            skip = max(0, cursor - (total - len(records)))
            return list(itertools.islice(records, skip, None)), total

    def _write_scalars(self, pushes, steps):
        """TensorBoard scalars per applied update (x axis: the update)."""
        if not self._tensorboard_dir or not (pushes or steps):
            return
        import tensorflow as tf
        if self._summary_writer is None:
            self._summary_writer = tf.summary.create_file_writer(
                self._tensorboard_dir)
        for p in pushes:
            self._counts[p["outcome"].startswith("admitted")] += 1
        with self._summary_writer.as_default():
            for s in steps:
                x = s["step"] + 1
                tf.summary.scalar("ps_sync/quorum", s["quorum"], step=x)
                tf.summary.scalar("ps_sync/collect_s",
                                  s["closed_at"] - s["opened_at"], step=x)
                if self._last_closed_at is not None:
                    tf.summary.scalar("ps_sync/update_interval_s",
                                      s["closed_at"] - self._last_closed_at,
                                      step=x)
                self._last_closed_at = s["closed_at"]
            if steps:
                total = self._counts[True] + self._counts[False]
                tf.summary.scalar("ps_sync/wasted_share",
                                  self._counts[False] / total,
                                  step=steps[-1]["step"] + 1)
        self._summary_writer.flush()

    def _step_record(self, closing, closed_by):
        admitted = sorted(self._open.pop(closing["step"], []),
                          key=lambda r: r["admitted_rank"])
        # Steps left open by a checkpoint restore are never closed.
        for step in [s for s in self._open if s < closing["step"]]:
            del self._open[step]
        return {"type": "step", "v": SCHEMA_VERSION,
                "run_id": closing["run_id"], "step": closing["step"],
                "closed_at": closing["arrived_at"],
                "opened_at": (admitted[0]["arrived_at"] if admitted
                              else closing["arrived_at"]),
                "admitted": [r["worker"] for r in admitted],
                "quorum": len(admitted),
                "degraded": len(admitted) < self._protocol.replicas_to_aggregate,
                "closed_by": closed_by}


def read(directory):
    """(pushes, steps) records of a telemetry directory."""
    out = []
    for name in (PUSHES_FILE, STEPS_FILE):
        path = os.path.join(directory, name)
        records = []
        if os.path.exists(path):
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    record = json.loads(line)
                    if record.get("v") != SCHEMA_VERSION:
                        raise ValueError(
                            "%s line %d: telemetry schema version %r, this "
                            "ps_sync reads version %d"
                            % (path, number, record.get("v"), SCHEMA_VERSION))
                    records.append(record)
        out.append(records)
    return tuple(out)


def summarize(pushes, steps, num_workers):
    """Per-worker counts, update rate and the share of wasted gradients."""
    per_worker = [collections.Counter() for _ in range(num_workers)]
    compute_s = [0.0] * num_workers
    for p in pushes:
        per_worker[p["worker"]][p["outcome"]] += 1
        if p["ready_at"] > 0:
            compute_s[p["worker"]] += max(0.0, p["computed_at"] - p["ready_at"])
    admitted = sum(c["admitted"] + c["admitted_closed"] for c in per_worker)
    total = len(pushes)
    span = (steps[-1]["closed_at"] - steps[0]["closed_at"]) if steps else 0.0
    return {
        "pushes": total,
        "updates": len(steps),
        "degraded_updates": sum(1 for s in steps if s["degraded"]),
        "updates_per_s": (len(steps) - 1) / span if span > 0 else None,
        "wasted_share": (total - admitted) / total if total else None,
        "per_worker": [
            {"worker": w,
             "admitted": c["admitted"] + c["admitted_closed"],
             "dropped_stale": c["dropped_stale"],
             "dropped_duplicate": c["dropped_duplicate"],
             "compute_s": round(compute_s[w], 3)}
            for w, c in enumerate(per_worker)],
    }
