"""Simulator inputs measured from a run directory, and predictions from them.

Reads a run's telemetry through ps_sync.analysis (which loads TensorFlow;
the simulator itself does not). From the records of a run without injected
pauses it takes:
- worker times: the pooled step times `arrived_at - ready_at` of every push
  (analysis.step_times: forward, backward, input, closure dispatch, sending,
  queueing at the PS), as an empirical distribution of CPU work;
- push_cost_s: the 5th percentile of the gap between a push that applied
  nothing and the next push to enter the PS's critical section (when pushes
  queue, that gap is the critical section's duration); apply_cost_s: the
  same after a push that applied an update, minus push_cost_s. (The
  telemetry's own stamps inside one critical section are not ordered with
  the apply, so they cannot time it.)
- wake_s: median of a waiter's next `ready_at` after its step's closer got
  its own.

The step times were measured under the calibration run's contention (every
worker on this machine's cores) and include the PS queueing, so they are
scaled by one factor chosen so that the simulated calibration setting
makes the calibration run's steady updates per second; the simulator's
processor sharing and PS queue then predict other settings.
Nothing of a predicted setting's outcome is used for its prediction: only
its N, b and the pauses the launcher injected (inputs of that run).
"""
import ps_sync.keras_env  # noqa: F401  (analysis loads TensorFlow)

import collections
import dataclasses
import os
import statistics

from ps_sync import analysis
from ps_sync import simulator

WARMUP_UPDATES = 10  # first updates skipped: tracing and start-up


@dataclasses.dataclass
class Measured:
    """What a run measured, in the simulator's terms."""
    num_workers: int
    replicas_to_aggregate: int
    updates: int               # in the window every worker was active
    updates_in_run: int
    updates_per_s: float       # steady rate in that window, after warm-up
    wasted_share: float
    duplicates: int
    first_duplicate_s: float   # simulated time of the first, or None
    step_times: list           # ready -> decided at the PS, per push
    push_cost_s: float
    apply_cost_s: float
    wake_s: float
    start: float               # wall time taken as simulated time 0
    duration_s: float          # start to the window's last update
    pauses: list               # [(worker, start, end)] in simulated time


def steady_rate(closes, skip=WARMUP_UPDATES):
    """Updates per second from the skip-th update to the last."""
    closes = sorted(closes)[skip:]
    if len(closes) < 2 or closes[-1] <= closes[0]:
        return None
    return (len(closes) - 1) / (closes[-1] - closes[0])


def _median(values, default=0.0):
    return statistics.median(values) if values else default


def _quantile(values, q, default=0.0):
    return analysis.quantile(values, q) if values else default


def measure_run(run_dir):
    """A run directory's telemetry (and injected pauses) as `Measured`."""
    run = analysis.load_run(run_dir)
    if not run.steps:
        raise ValueError("%s: no applied updates in %s" % (run_dir,
                                                           "steps.jsonl"))
    pushes = sorted(run.pushes, key=lambda p: p["arrived_at"])
    closed_at = {(s["run_id"], s["step"]): s["closed_at"] for s in run.steps}
    nxt = {}
    by_worker = collections.defaultdict(list)
    for p in pushes:
        by_worker[(p["run_id"], p["worker"])].append(p)
    for seq in by_worker.values():
        for a, b in zip(seq, seq[1:]):
            nxt[id(a)] = b
    times = [p["arrived_at"] - p["ready_at"] for p in pushes
             if p["ready_at"] > 0]
    after_push, after_apply, wake = [], [], []
    for a, b in zip(pushes, pushes[1:]):
        gap = b["arrived_at"] - a["arrived_at"]
        (after_apply if a["outcome"] == "admitted_closed"
         else after_push).append(gap)
    closer_ready = {}
    for p in pushes:
        q = nxt.get(id(p))
        if (p["outcome"] == "admitted_closed" and q is not None
                and q["ready_at"] > 0):
            closer_ready[(p["run_id"], p["step"])] = q["ready_at"]
    for p in pushes:
        q = nxt.get(id(p))
        key = (p["run_id"], p["step"])
        if (p["outcome"] == "admitted" and q is not None and q["ready_at"] > 0
                and key in closer_ready):
            wake.append(q["ready_at"] - closer_ready[key])
    push_cost = _quantile(after_push, 0.05)
    apply_cost = max(0.0, _quantile(after_apply, 0.05) - push_cost)
    start = min(p["arrived_at"] for p in pushes) - _median(times)
    # The window in which every worker was pushing: a worker that stops
    # pushing for good (lost its wake-up, see the report) is not modelled.
    last_push = {}
    for p in pushes:
        last_push[p["worker"]] = p["arrived_at"]
    active_until = min(last_push.values())
    all_closes = sorted(closed_at.values())
    closes = [t for t in all_closes if t <= active_until]
    pauses = [(e["worker"], e["start"] - start, e["end"] - start)
              for e in (run.pauses or []) if e["end"] > start]
    return Measured(
        num_workers=run.num_workers,
        replicas_to_aggregate=run.replicas_to_aggregate,
        updates=len(closes), updates_in_run=len(all_closes),
        updates_per_s=steady_rate(closes),
        wasted_share=analysis.analyze(run)["wasted_share"],
        duplicates=sum(1 for p in pushes
                       if p["outcome"] == "dropped_duplicate"
                       and p["arrived_at"] <= active_until),
        first_duplicate_s=min((p["arrived_at"] - start for p in pushes
                               if p["outcome"] == "dropped_duplicate"),
                              default=None),
        step_times=times, push_cost_s=push_cost, apply_cost_s=apply_cost,
        wake_s=max(0.0, _median(wake)), start=start,
        duration_s=closes[-1] - start, pauses=pauses)


@dataclasses.dataclass
class Calibration:
    worker_times: simulator.Empirical
    push_cost_s: float
    apply_cost_s: float
    wake_s: float
    cores: float
    scale: float
    calibrated_on: dict

    def cluster(self, num_workers, replicas_to_aggregate, pauses=(),
                mode="sync", quorum_policy=None):
        """Every worker on one machine of `cores` cores, like this one."""
        return simulator.Cluster(
            num_workers=num_workers, worker_times=self.worker_times,
            replicas_to_aggregate=replicas_to_aggregate, mode=mode,
            push_cost_s=self.push_cost_s,
            apply_cost_s=self.apply_cost_s, wake_s=self.wake_s,
            workers_per_machine=num_workers, cores_per_machine=self.cores,
            pauses=tuple(pauses), quorum_policy=quorum_policy)

    def summary(self):
        return {"push_cost_s": self.push_cost_s,
                "apply_cost_s": self.apply_cost_s, "wake_s": self.wake_s,
                "cores": self.cores, "work_scale": self.scale,
                "work_mean_s": self.worker_times.mean(),
                "calibrated_on": self.calibrated_on}


def calibrate(measured, cores=None, seed=0, iterations=8):
    """Simulator inputs from a `Measured` run without pauses: the step-time
    distribution's shape as measured, its scale fitted so that the simulated
    calibration setting makes the measured steady updates per second (over
    the same duration)."""
    if measured.pauses:
        raise ValueError("calibrate on a run without injected pauses: its "
                         "worker times would include them")
    cores = float(cores or os.cpu_count() or 1)
    base = simulator.Empirical(measured.step_times)
    scale = 1.0
    cal = None
    for _ in range(iterations):
        cal = Calibration(base.scaled(scale), measured.push_cost_s,
                          measured.apply_cost_s, measured.wake_s, cores,
                          scale,
                          {"num_workers": measured.num_workers,
                           "replicas_to_aggregate":
                               measured.replicas_to_aggregate,
                           "updates_per_s": measured.updates_per_s,
                           "mean_step_s": statistics.fmean(
                               measured.step_times)})
        rate, _ = predict(cal, measured.num_workers,
                          measured.replicas_to_aggregate,
                          duration_s=measured.duration_s, seed=seed)
        # Rate is close to inversely proportional to the work scale.
        scale *= rate / measured.updates_per_s
    return cal


def predict(calibration, num_workers, replicas_to_aggregate, pauses=(),
            duration_s=60.0, seed=0, mode="sync", quorum_policy=None):
    """Simulated run of `duration_s` seconds; returns (steady updates/s,
    simulator.Result)."""
    result = simulator.simulate(
        calibration.cluster(num_workers, replicas_to_aggregate, pauses, mode,
                            quorum_policy),
        duration_s=duration_s, seed=seed)
    return steady_rate(result.closes), result
