"""What one run's telemetry says about its stragglers.

    python -m ps_sync.analysis <run_dir> [--out_dir DIR] [--num_workers W]

Reads `pushes.jsonl` and `steps.jsonl` (ps_sync.telemetry) and, if the
launcher injected pauses, `stragglers.jsonl`; writes `analysis.json`,
`analysis.txt` and PNG plots under `<run_dir>/plots/`, and prints the text
report. Nothing here re-instruments training.

Definitions (times in seconds, all from telemetry records):
- Version t starts when step t-1 closes (`closed_at` of step t-1). The time
  to collect the k-th gradient of version t is the arrival of the k-th
  distinct worker's first gradient computed on t (tag == t, admitted or
  dropped late), minus that start. Only versions whose steps t-1 and t both
  closed are counted. A worker still busy with an older version produces no
  gradient on t: for that version the k-th never arrives, so each k has an
  `arrived_fraction` and the CDFs of the higher k end below 1.
- Step time of a push: `arrived_at - ready_at` (from getting the parameters
  to the gradient reaching the parameter server); compute time:
  `computed_at - ready_at` (forward, backward, input, closure dispatch).
- Waiting: from `computed_at` of a push to `ready_at` of the worker's next
  push (sending it, admission, waiting for the step to close).
- A worker's first push has no `ready_at` (0) and counts in neither.
- Observed delay of an injected pause: over the gaps between the paused
  worker's consecutive arrivals that overlap the pause, the sum of their
  excess over that worker's median gap outside pauses. Pauses before its
  first or after its last push (start-up, shutdown) have none.
"""
import ps_sync.keras_env  # noqa: F401  (telemetry loads TensorFlow)

import argparse
import bisect
import collections
import json
import math
import os
import sys

from ps_sync import telemetry as telemetry_lib

STRAGGLERS_FILE = "stragglers.jsonl"
SPEC_FILE = "spec.json"
REPORT_JSON = "analysis.json"
REPORT_TEXT = "analysis.txt"
PLOTS_DIR = "plots"
QUANTILES = (0.1, 0.5, 0.9, 0.99)

Run = collections.namedtuple(
    "Run", "pushes steps pauses num_workers replicas_to_aggregate")


# -- small statistics --------------------------------------------------------

def quantile(values, q):
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    low = int(math.floor(pos))
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (pos - low)


def describe(values):
    """count, mean, quantiles and max of a list (None fields when empty)."""
    out = {"count": len(values)}
    if not values:
        out.update(mean=None, max=None,
                   **{"p%d" % round(100 * q): None for q in QUANTILES})
        return out
    out["mean"] = sum(values) / len(values)
    for q in QUANTILES:
        out["p%d" % round(100 * q)] = quantile(values, q)
    out["max"] = max(values)
    return out


# -- reading a run -----------------------------------------------------------

def read_pauses(run_dir):
    """Completed pauses from the launcher's log: [{worker, task, start, end,
    paused_s, planned_s}] (planned_s from the matching pause event)."""
    path = os.path.join(run_dir, STRAGGLERS_FILE)
    if not os.path.exists(path):
        return None
    planned = {}
    pauses = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            event = json.loads(line)
            task = event.get("task", "")
            if event.get("event") == "pause":
                planned[(task, event["time"])] = event.get("planned_s")
            elif event.get("event") == "resume":
                job, _, index = task.rpartition("-")
                if job != "worker" or not index.isdigit():
                    continue
                start = event["paused_at"]
                pauses.append({"task": task, "worker": int(index),
                               "start": start, "end": event["time"],
                               "paused_s": event["paused_s"],
                               "planned_s": planned.get((task, start))})
    return pauses


def _spec_workers(run_dir):
    """(workers, N) from the launcher's resolved spec.json, or Nones."""
    path = os.path.join(run_dir, SPEC_FILE)
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return None, None
    workers = spec.get("_resolved", {}).get("cluster", {}).get("worker")
    n = spec.get("sync", {}).get("replicas_to_aggregate")
    return (len(workers) if isinstance(workers, list) else None), n


def load_run(run_dir, num_workers=None, replicas_to_aggregate=None):
    if not os.path.isdir(run_dir):
        raise ValueError("run directory %r does not exist" % run_dir)
    pushes, steps = telemetry_lib.read(run_dir)
    spec_workers, spec_n = _spec_workers(run_dir)
    seen = max([p["worker"] for p in pushes], default=-1) + 1
    num_workers = num_workers or spec_workers or seen
    if replicas_to_aggregate is None:
        replicas_to_aggregate = spec_n or max(
            [p["quorum"] for p in pushes], default=None)
    return Run(pushes, steps, read_pauses(run_dir), num_workers,
               replicas_to_aggregate)


# -- the statistics ----------------------------------------------------------

def version_starts(steps):
    """{(run_id, t): time version t was published} from step records."""
    return {(s["run_id"], s["step"] + 1): s["closed_at"] for s in steps}


def arrival_offsets(pushes, steps, num_workers):
    """Per k = 1..num_workers, the time to the k-th gradient of each complete
    version (see the module docstring). Returns (offsets, versions):
    offsets[k-1] lists the k-th offsets of the versions that got k."""
    starts = version_starts(steps)
    closed = {(s["run_id"], s["step"]) for s in steps}
    first = collections.defaultdict(dict)  # (run, t) -> worker -> arrival
    for p in pushes:
        key = (p["run_id"], p["tag"])
        if p["worker"] not in first[key] or \
                p["arrived_at"] < first[key][p["worker"]]:
            first[key][p["worker"]] = p["arrived_at"]
    offsets = [[] for _ in range(num_workers)]
    versions = 0
    for key, start in sorted(starts.items()):
        if key not in closed:
            continue  # the last version: its step never closed
        versions += 1
        arrivals = sorted(first.get(key, {}).values())
        for k, arrived in enumerate(arrivals[:num_workers]):
            offsets[k].append(arrived - start)
    return offsets, versions


def arrival_stats(offsets, versions, limit_s=None):
    out = []
    for k, values in enumerate(offsets, 1):
        entry = dict(describe(values), k=k,
                     arrived_fraction=(len(values) / versions
                                       if versions else None))
        if limit_s is not None:
            entry["within_limit_fraction"] = (
                sum(1 for v in values if v <= limit_s) / versions
                if versions else None)
        out.append(entry)
    return out


def _by_worker_sequence(pushes):
    """{(run_id, worker): pushes in arrival order}."""
    seq = collections.defaultdict(list)
    for p in pushes:
        seq[(p["run_id"], p["worker"])].append(p)
    for records in seq.values():
        records.sort(key=lambda p: p["arrived_at"])
    return seq


def step_times(pushes, num_workers):
    """Per worker: lists of step times and compute times (pushes with a
    ready_at)."""
    out = [{"step": [], "compute": []} for _ in range(num_workers)]
    for p in pushes:
        if p["ready_at"] > 0 and p["worker"] < num_workers:
            out[p["worker"]]["step"].append(p["arrived_at"] - p["ready_at"])
            out[p["worker"]]["compute"].append(
                p["computed_at"] - p["ready_at"])
    return out


def compute_vs_wait(pushes, num_workers):
    """Per worker: {compute_s, waiting_s, compute_share}."""
    compute = [0.0] * num_workers
    waiting = [0.0] * num_workers
    for (_, worker), records in _by_worker_sequence(pushes).items():
        if worker >= num_workers:
            continue
        for p, nxt in zip(records, records[1:] + [None]):
            if p["ready_at"] > 0:
                compute[worker] += p["computed_at"] - p["ready_at"]
            if nxt is not None and nxt["ready_at"] >= p["computed_at"]:
                waiting[worker] += nxt["ready_at"] - p["computed_at"]
    return [{"worker": w, "compute_s": compute[w], "waiting_s": waiting[w],
             "compute_share": (compute[w] / (compute[w] + waiting[w])
                               if compute[w] + waiting[w] > 0 else None)}
            for w in range(num_workers)]


def push_phases(pushes, steps):
    """Where a push's time goes, over all workers (seconds, describe()):
    compute: ready (tagged) to gradient computed, on the worker;
    send: gradient computed to admission under the lock on the PS;
    resume: version published to a waiter's retag after its wake-up (pushes
    whose worker's previous push was admitted and waited)."""
    starts = version_starts(steps)
    compute, send, resume = [], [], []
    for (run_id, _), records in _by_worker_sequence(pushes).items():
        for prev, p in zip([None] + records[:-1], records):
            if p["ready_at"] <= 0:
                continue
            compute.append(p["computed_at"] - p["ready_at"])
            send.append(p["arrived_at"] - p["computed_at"])
            start = starts.get((run_id, p["tag"]))
            if (prev is not None and prev["outcome"] == "admitted"
                    and start is not None and p["ready_at"] >= start):
                resume.append(p["ready_at"] - start)
    return {"compute": describe(compute), "send": describe(send),
            "resume": describe(resume)}


def push_counts(pushes, num_workers):
    """Per worker: pushes, admitted, each dropped outcome, admitted share."""
    counts = [collections.Counter() for _ in range(num_workers)]
    for p in pushes:
        if p["worker"] < num_workers:
            counts[p["worker"]][p["outcome"]] += 1
    admitted = [c["admitted"] + c["admitted_closed"] for c in counts]
    total_admitted = sum(admitted)
    out = []
    for w, c in enumerate(counts):
        dropped = {k: v for k, v in sorted(c.items())
                   if not k.startswith("admitted")}
        out.append({"worker": w, "pushes": sum(c.values()),
                    "admitted": admitted[w],
                    "dropped": sum(dropped.values()),
                    "dropped_by_outcome": dropped,
                    "admitted_share": (admitted[w] / total_admitted
                                       if total_admitted else None)})
    return out


def pause_delays(pushes, pauses):
    """Each injected pause with the delay the paused worker shows: over the
    gaps between its consecutive arrivals that the pause overlaps, the sum
    of their excess over its median gap outside pauses (a stopped process
    delays whatever it was doing: computing, pushing or waiting)."""
    if not pauses:
        return []
    windows = collections.defaultdict(list)  # worker -> [(start, end)]
    for pause in pauses:
        windows[pause["worker"]].append((pause["start"], pause["end"]))
    gaps = {}      # worker -> [(from, to, outcome of the push at `to`)]
    baseline = {}  # worker -> median clean gap
    for worker in windows:
        mine = sorted((p for p in pushes if p["worker"] == worker),
                      key=lambda p: p["arrived_at"])
        gaps[worker] = [(a["arrived_at"], b["arrived_at"], b["outcome"])
                        for a, b in zip(mine, mine[1:])]
        clean = [hi - lo for lo, hi, _ in gaps[worker]
                 if not any(lo < e and hi > s for s, e in windows[worker])]
        baseline[worker] = quantile(clean, 0.5) if clean else 0.0
    out = []
    for pause in pauses:
        worker = pause["worker"]
        # Gaps are sorted and disjoint: the ones overlapping the pause start
        # at the last gap beginning before it.
        mine = gaps[worker]
        first = max(0, bisect.bisect_left(mine, (pause["start"],)) - 1)
        hit = []
        for g in mine[first:]:
            if g[0] >= pause["end"]:
                break
            if g[1] > pause["start"]:
                hit.append(g)
        observed = (sum(max(0.0, hi - lo - baseline[worker])
                        for lo, hi, _ in hit) if hit else None)
        out.append(dict(pause, gaps_affected=len(hit),
                        observed_delay_s=observed,
                        baseline_gap_s=baseline[worker],
                        next_push_outcome=hit[-1][2] if hit else None))
    return out


def update_rate(steps):
    """Updates per second between the first and last close of each run id,
    pooled over run ids (a restarted chief starts a new one)."""
    by_run = collections.defaultdict(list)
    for s in steps:
        by_run[s["run_id"]].append(s["closed_at"])
    updates, span = 0, 0.0
    for times in by_run.values():
        if len(times) > 1:
            updates += len(times) - 1
            span += max(times) - min(times)
    return updates / span if span > 0 else None


def analyze(run, limit_s=None):
    """Every statistic of a run, JSON-serialisable."""
    offsets, versions = arrival_offsets(run.pushes, run.steps,
                                        run.num_workers)
    times = step_times(run.pushes, run.num_workers)
    result = {
        "num_workers": run.num_workers,
        "replicas_to_aggregate": run.replicas_to_aggregate,
        "pushes": len(run.pushes),
        "updates": len(run.steps),
        "degraded_updates": sum(1 for s in run.steps if s.get("degraded")),
        "updates_per_s": update_rate(run.steps),
        "versions": versions,
        "arrival": arrival_stats(offsets, versions, limit_s),
        "arrival_offsets": offsets,
        "per_worker": [],
        "pauses": None,
    }
    counts = push_counts(run.pushes, run.num_workers)
    split = compute_vs_wait(run.pushes, run.num_workers)
    for w in range(run.num_workers):
        result["per_worker"].append(dict(
            counts[w], compute_s=split[w]["compute_s"],
            waiting_s=split[w]["waiting_s"],
            compute_share=split[w]["compute_share"],
            step_time=describe(times[w]["step"]),
            compute_time=describe(times[w]["compute"])))
    total = len(run.pushes)
    admitted = sum(c["admitted"] for c in counts)
    result["wasted_share"] = (total - admitted) / total if total else None
    if run.pauses is not None:
        delays = pause_delays(run.pushes, run.pauses)
        observed = [d for d in delays if d["observed_delay_s"] is not None]
        result["pauses"] = {
            "count": len(delays),
            "injected_s": sum(d["paused_s"] for d in delays),
            "observed_s": sum(d["observed_delay_s"] for d in observed),
            "matched": len(observed),
            "matched_injected_s": sum(d["paused_s"] for d in observed),
            "events": delays,
        }
    return result


# -- report and plots --------------------------------------------------------

def _fmt(x, digits=3):
    return "-" if x is None else ("%.*f" % (digits, x))


def text_report(result):
    n, w = result["replicas_to_aggregate"], result["num_workers"]
    lines = ["Run analysis: %d workers, N=%s per update (b=%s)"
             % (w, n, (w - n) if n else "?"),
             "updates %d, pushes %d, wasted share %s, updates/s %s"
             % (result["updates"], result["pushes"],
                _fmt(result["wasted_share"]),
                _fmt(result["updates_per_s"], 2)),
             "",
             "Time to the k-th gradient of a version (s), over %d versions:"
             % result["versions"],
             "   k  arrived   p10     p50     p90     max"]
    for a in result["arrival"]:
        mark = " <- N" if a["k"] == n else ""
        lines.append("  %2d  %6s  %6s  %6s  %6s  %6s%s" % (
            a["k"], _fmt(a["arrived_fraction"], 2), _fmt(a["p10"]),
            _fmt(a["p50"]), _fmt(a["p90"]), _fmt(a["max"]), mark))
    lines += ["", "Per worker:",
              "  worker  pushes  admitted  dropped  share  step p50  "
              "step p90  compute s  waiting s"]
    for p in result["per_worker"]:
        lines.append("  %6d  %6d  %8d  %7d  %5s  %8s  %8s  %9.1f  %9.1f" % (
            p["worker"], p["pushes"], p["admitted"], p["dropped"],
            _fmt(p["admitted_share"], 2), _fmt(p["step_time"]["p50"]),
            _fmt(p["step_time"]["p90"]), p["compute_s"], p["waiting_s"]))
    pauses = result["pauses"]
    if pauses is not None:
        lines += ["", "Injected pauses: %d, %.1f s in total; %d (%.1f s) "
                  "while the worker trained, observed delay %.1f s"
                  % (pauses["count"], pauses["injected_s"],
                     pauses["matched"], pauses["matched_injected_s"],
                     pauses["observed_s"])]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_arrivals(result, path):
    """The paper's figure: CDF of the time to the k-th gradient, every k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    versions = result["versions"]
    n = result["replicas_to_aggregate"]
    for k, values in enumerate(result["arrival_offsets"], 1):
        if not values or not versions:
            continue
        xs = sorted(values)
        ys = [(i + 1) / versions for i in range(len(xs))]
        ax.step(xs, ys, where="post", linewidth=2.5 if k == n else 1.2,
                label="k=%d%s" % (k, " (N)" if k == n else ""))
    values = [v for vs in result["arrival_offsets"] for v in vs if v > 0]
    if values and max(values) > 10 * quantile(values, 0.5):
        ax.set_xscale("log")  # a heavy tail would squash the body
    ax.set_xlabel("time since the version was published (s)")
    ax.set_ylabel("fraction of versions with k gradients")
    ax.set_title("Time to collect the k-th gradient (%d versions)" % versions)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_step_times(run, result, path):
    plt = _pyplot()
    times = step_times(run.pushes, run.num_workers)
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [t["step"] or [0.0] for t in times]
    ax.boxplot(data, whis=(5, 95), showfliers=True)
    ax.set_xticks(range(1, len(data) + 1))
    ax.set_xticklabels(["worker %d" % w for w in range(len(data))])
    ax.set_ylabel("step time: parameters -> gradient at PS (s)")
    ax.set_yscale("log")
    ax.set_title("Per-worker step times")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_workers(result, path):
    """Pushes admitted/dropped and compute/waiting time, per worker."""
    plt = _pyplot()
    per = result["per_worker"]
    xs = list(range(len(per)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    admitted = [p["admitted"] for p in per]
    dropped = [p["dropped"] for p in per]
    left.bar(xs, admitted, label="admitted")
    left.bar(xs, dropped, bottom=admitted, label="dropped")
    left.set_title("Pushes per worker")
    compute = [p["compute_s"] for p in per]
    waiting = [p["waiting_s"] for p in per]
    right.bar(xs, compute, label="computing")
    right.bar(xs, waiting, bottom=compute, label="pushing + waiting")
    right.set_title("Time per worker (s)")
    for ax in (left, right):
        ax.set_xticks(xs)
        ax.set_xticklabels(["w%d" % x for x in xs])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pauses(result, path):
    plt = _pyplot()
    events = [e for e in result["pauses"]["events"]
              if e["observed_delay_s"] is not None]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    xs = [e["paused_s"] for e in events]
    ys = [e["observed_delay_s"] for e in events]
    ax.scatter(xs, ys, s=18)
    top = max(xs + ys + [0.1])
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1,
            label="observed = injected")
    ax.set_xlabel("injected pause (s)")
    ax.set_ylabel("observed extra gap between its pushes (s)")
    ax.set_title("Injected pauses vs observed delays")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(run, result, out_dir):
    """PNG plots; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}

    def save(name, fn, *args):
        paths[name] = os.path.join(out_dir, name + ".png")
        fn(*args, paths[name])

    save("gradient_arrivals", plot_arrivals, result)
    save("worker_step_times", plot_step_times, run, result)
    save("worker_pushes_and_time", plot_workers, result)
    if result["pauses"] and result["pauses"]["events"]:
        save("pauses_vs_delays", plot_pauses, result)
    return paths


def run_analysis(run_dir, out_dir=None, num_workers=None,
                 replicas_to_aggregate=None, limit_s=None):
    """Analyse a run directory, write its report files and plots; returns
    (result, text). The result's `plots` maps plot names to paths."""
    run = load_run(run_dir, num_workers, replicas_to_aggregate)
    result = analyze(run, limit_s)
    out_dir = out_dir or run_dir
    result["plots"] = write_plots(run, result,
                                  os.path.join(out_dir, PLOTS_DIR))
    text = text_report(result)
    # The raw offsets (versions x workers numbers) stay out of the file.
    saved = {k: v for k, v in result.items() if k != "arrival_offsets"}
    with open(os.path.join(out_dir, REPORT_JSON), "w") as f:
        json.dump(saved, f, indent=1)
    with open(os.path.join(out_dir, REPORT_TEXT), "w") as f:
        f.write(text)
    return result, text


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ps_sync.analysis",
        description="Straggler analysis of one run directory (telemetry "
        "pushes.jsonl/steps.jsonl, launcher stragglers.jsonl).")
    parser.add_argument("run_dir")
    parser.add_argument("--out_dir", help="where to write analysis.json, "
                        "analysis.txt and plots/ (default: the run dir)")
    parser.add_argument("--num_workers", type=int,
                        help="N+b (default: from spec.json or the records)")
    parser.add_argument("--replicas_to_aggregate", type=int,
                        help="N (default: from spec.json or the records)")
    parser.add_argument("--limit_s", type=float,
                        help="also report the share of versions whose k-th "
                        "gradient came within this many seconds")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        parser.error("run directory %r does not exist" % args.run_dir)
    if not os.path.exists(os.path.join(args.run_dir,
                                       telemetry_lib.PUSHES_FILE)):
        parser.error("%r has no %s: not the run directory of a synchronous "
                     "run" % (args.run_dir, telemetry_lib.PUSHES_FILE))
    try:
        result, text = run_analysis(args.run_dir, args.out_dir,
                                    args.num_workers,
                                    args.replicas_to_aggregate, args.limit_s)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(text)
    for name, path in sorted(result["plots"].items()):
        print("%s: %s" % (name, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
