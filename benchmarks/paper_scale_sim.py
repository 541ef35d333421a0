"""The paper's Inception configurations at 50, 100 and 200 workers, predicted
by the simulator from what ran here.

    python -m benchmarks.paper_scale_sim [--updates 300] [--seeds 2]

Worker times, two sources:
- `measured`: the per-push compute times of this machine's Inception-v3
  (75x75) run, `benchmarks/results/inception_small.json` (both synchronous
  variants pooled, resampled), one worker per machine: the shape of a
  measured distribution, stragglers of a shared machine included.
- `paper_tail`: the heavy tail calibrated to the paper's figure (about 80%
  of the second-to-last and 30% of the last of 100 gradients within 2 s).

Per configuration (`cluster_specs/inception_*`): synchronous N of N+b (the
spec), synchronous N+b of N+b (no backups, the same machines) and
asynchronous on the same machines. The parameter-server cost of a push is
the one thing not measurable at this scale here: ps_sync serialises pushes
in one critical section on the protocol PS, so each row is given for a
per-push PS cost of 0 (an ideal PS) and of `--push_cost_ms` (default 5 ms,
about what one push costs the PS in `benchmarks.sync_overhead` on a small
MLP: 1 / 180 pushes/s); the apply costs `--apply_cost_ms` either way.

Writes benchmarks/results/paper_scale_sim.json and .png (`--out`).
Simulated, not measured.
"""
import argparse
import json
import os
import statistics
import sys

from benchmarks import common
from ps_sync import simulator

CONFIGS = ((50, 4), (96, 4), (200, 10))  # cluster_specs/inception_*.json
BATCH = 32  # images per worker step (the inception specs' batch size)


def measured_times(path):
    """Pooled compute times of the synchronous variants of a run of
    benchmarks.inception_small."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError("%s: not JSON (%s)" % (path, e)) from None
    results = data.get("results") if isinstance(data, dict) else None
    samples = [t for r in results or [] if isinstance(r, dict)
               and r.get("mode") == "sync"
               for t in (r.get("protocol") or {}).get("compute_s_samples",
                                                      [])]
    if not samples:
        raise ValueError("%s: no results[*].protocol.compute_s_samples of a "
                         "sync variant; run benchmarks.inception_small first"
                         % path)
    return simulator.Empirical(samples)


def predict(times, n, b, mode, push_cost_s, apply_cost_s, updates, seeds):
    workers = n + b
    rows = []
    for seed in range(seeds):
        result = simulator.simulate(simulator.Cluster(
            num_workers=workers, worker_times=times,
            replicas_to_aggregate=None if mode == "async" else
            (n if mode == "sync" else workers),
            mode="async" if mode == "async" else "sync",
            push_cost_s=push_cost_s, apply_cost_s=apply_cost_s),
            updates=updates if mode != "async" else updates * n,
            seed=seed)
        rows.append(result.summary())
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    quorum = mean("mean_quorum")
    rate = mean("updates_per_s")
    return {"updates_per_s": rate, "mean_step_s": 1.0 / rate,
            "mean_quorum": quorum, "images_per_s": rate * quorum * BATCH,
            "wasted_share": mean("wasted_share"),
            "mean_compute_s": mean("mean_compute_s")}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m "
                                     "benchmarks.paper_scale_sim")
    parser.add_argument("--updates", type=common.positive_int, default=300,
                        help="synchronous updates simulated per run")
    parser.add_argument("--seeds", type=common.positive_int, default=2)
    parser.add_argument("--push_cost_ms", type=float, default=5.0)
    parser.add_argument("--apply_cost_ms", type=float, default=5.0)
    parser.add_argument("--measured", default=os.path.join(
        common.RESULTS_DIR, "inception_small.json"),
        help="a results JSON of benchmarks.inception_small")
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR,
                                                      "paper_scale_sim"))
    args = parser.parse_args(argv)
    if args.push_cost_ms < 0 or args.apply_cost_ms < 0:
        parser.error("--push_cost_ms and --apply_cost_ms must be >= 0")
    try:
        sources = {"measured": measured_times(args.measured)}
    except (OSError, ValueError) as e:
        parser.error("--measured: %s" % e)
    rows = []
    for source in ("measured", "paper_tail"):
        for n, b in CONFIGS:
            times = (sources[source] if source == "measured"
                     else simulator.paper_tail(n + b))
            for push_ms in sorted({0.0, args.push_cost_ms}):
                for mode in ("sync", "sync_no_backup", "async"):
                    row = {"times": source, "n": n, "b": b, "mode": mode,
                           "push_cost_ms": push_ms}
                    row.update(predict(times, n, b, mode, push_ms / 1000,
                                       args.apply_cost_ms / 1000,
                                       args.updates, args.seeds))
                    rows.append(row)
                    print("%-10s %3d+%-2d %-14s push %4.1f ms: %7.3f "
                          "updates/s, %8.1f images/s, wasted %.0f%%"
                          % (source, n, b, mode, push_ms,
                             row["updates_per_s"], row["images_per_s"],
                             100 * row["wasted_share"]), flush=True)
    out = {"benchmark": "paper_scale_sim", "command": " ".join(
               ["python -m benchmarks.paper_scale_sim"] + list(argv or
                                                               sys.argv[1:])),
           "args": vars(args), "simulated": True, "batch_per_worker": BATCH,
           "rows": rows}
    path = common.write_report(args.out, out)
    plot(rows, args.out + ".png")
    print("wrote", path)
    return 0


def plot(rows, path):
    plt = common.pyplot()
    sources = sorted({r["times"] for r in rows})
    costs = sorted({r["push_cost_ms"] for r in rows})
    fig, axes = plt.subplots(len(sources), len(costs),
                             figsize=(5 * len(costs), 3.6 * len(sources)),
                             squeeze=False)
    for i, source in enumerate(sources):
        for j, cost in enumerate(costs):
            ax = axes[i][j]
            for mode in ("sync", "sync_no_backup", "async"):
                sel = [r for r in rows if r["times"] == source
                       and r["push_cost_ms"] == cost and r["mode"] == mode]
                ax.plot([r["n"] + r["b"] for r in sel],
                        [r["images_per_s"] for r in sel], "o-", label=mode)
            ax.set_title("%s times, PS %.0f ms/push" % (source, cost),
                         fontsize=9)
            ax.set_xlabel("machines")
            ax.set_ylabel("images applied / s (simulated)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
