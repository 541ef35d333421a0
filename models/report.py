"""The end of a run: summary.json, the printed summary table and the plots.

The per-worker numbers and the gradient-arrival plot come from
`ps_sync.analysis` (the run directory's telemetry); this module adds the
training side (accuracy, updates, time) and the accuracy-over-time plot.
"""
import dataclasses
import json
import os
import time

SUMMARY_FILE = "summary.json"
ACCURACY_PLOT = "accuracy.png"


def plot_accuracy(history, path, target=None):
    """Test precision@1 (and @5) against wall time since training began."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [h for h in history if h.get("elapsed_s") is not None]
    xs = [h["elapsed_s"] for h in points]
    ax.plot(xs, [h["top1"] for h in points], marker="o", label="precision@1")
    if any(h.get("top5") is not None for h in points):
        ax.plot(xs, [h["top5"] for h in points], marker=".", alpha=0.6,
                label="precision@5")
    if target:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1,
                   label="target %.2f" % target)
    for h in points[-1:]:
        ax.annotate("%.3f @ update %d" % (h["top1"], h["update"]),
                    (h["elapsed_s"], h["top1"]), textcoords="offset points",
                    xytext=(-90, -18))
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Test accuracy over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_worker_rows(analysis_result):
    """The per-worker table rows of summary.json from an analysis result."""
    rows = []
    for p in analysis_result["per_worker"]:
        rows.append({
            "worker": p["worker"], "pushes": p["pushes"],
            "admitted": p["admitted"], "dropped": p["dropped"],
            "dropped_by_outcome": p["dropped_by_outcome"],
            "admitted_share": p["admitted_share"],
            "compute_s": round(p["compute_s"], 3),
            "waiting_s": round(p["waiting_s"], 3),
            "step_time_p50_s": p["step_time"]["p50"],
            "step_time_p90_s": p["step_time"]["p90"]})
    return rows


def arrival_rows(analysis_result):
    return [{"k": a["k"], "arrived_fraction": a["arrived_fraction"],
             "p50_s": a["p50"], "p90_s": a["p90"]}
            for a in analysis_result["arrival"]]


def _fmt(x, spec="%.3f"):
    return "-" if x is None else spec % x


def table(summary):
    """The summary as printed at the end of a run."""
    s = summary
    sync = s["mode"] == "sync"
    head = ("sync, N=%d of %d workers (b=%d)" % (
        s["replicas_to_aggregate"], s["total_num_replicas"],
        s["backup_workers"]) if sync else
        "async, %d workers" % s["total_num_replicas"])
    acc = s["test_accuracy"]
    lines = [
        "Run summary: %s on %s, %s" % (s["model"], s["dataset"], head),
        "  updates        %d (target %d) in %.1f s of training: %s updates/s"
        % (s["updates"], s["target_updates"], s["train_time_s"],
           _fmt(s["updates_per_s"], "%.2f")),
        "  test accuracy  precision@1 %s, precision@5 %s (at update %s)"
        % (_fmt(acc["top1"]), _fmt(acc["top5"]), acc["update"]),
    ]
    if sync and s.get("pushes") is not None:
        wasted = s["wasted_share"]
        lines.append("  pushes         %d: %d admitted, %d dropped (%s)"
                     % (s["pushes"], s["pushes"] - s["dropped"], s["dropped"],
                        _fmt(None if wasted is None else 100 * wasted,
                             "%.1f%%")))
        lines.append("  worker  pushes  admitted  dropped  share  "
                     "computing s  waiting s")
        for w in s["per_worker"]:
            lines.append("  %6d  %6d  %8d  %7d  %5s  %11.1f  %9.1f" % (
                w["worker"], w["pushes"], w["admitted"], w["dropped"],
                _fmt(w["admitted_share"], "%.2f"), w["compute_s"],
                w["waiting_s"]))
    elif not sync:
        lines.append("  pushes         every gradient is applied as it "
                     "arrives (no per-worker telemetry in async mode)")
    if s.get("pauses"):
        p = s["pauses"]
        lines.append("  injected pauses %d (%.1f s); %d (%.1f s) while the "
                     "worker trained, observed delay %.1f s"
                     % (p["count"], p["injected_s"], p["matched"],
                        p["matched_injected_s"], p["observed_s"]))
    for r in s.get("rollbacks") or []:
        lines.append("  rollback %d     diverged at update %d (%s); restored "
                     "update %d" % (r["rollback"], r["diverged_at_update"],
                                    r["reason"], r["restored_update"]))
    for name, path in sorted(s["plots"].items()):
        lines.append("  plot %-24s %s" % (name, path))
    lines.append("  run directory  %s" % s["run_dir"])
    return "\n".join(lines)


def write_summary(summary, run_dir):
    path = os.path.join(run_dir, SUMMARY_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(path + ".tmp", path)  # a reader never sees half a file
    return path


def build_summary(config, run_dir, outcome, program_start,
                  target_accuracy=None):
    """summary.json's content; runs the telemetry analysis (sync runs) and
    draws every plot into <run_dir>/plots/."""
    from ps_sync import analysis, telemetry
    train_time = outcome["train_time_s"]
    done = outcome["updates"] - outcome["start_update"]
    final = outcome["final_eval"]
    summary = {
        "run_dir": run_dir, "model": config.model, "dataset": config.dataset,
        "mode": "sync" if config.sync else "async",
        "replicas_to_aggregate": (config.replicas_to_aggregate
                                  if config.sync else 1),
        "total_num_replicas": config.total_num_replicas,
        "backup_workers": config.backup_workers if config.sync else 0,
        "quorum_policy": config.quorum_policy,
        "recipe": dataclasses.asdict(config.recipe),
        "target_updates": config.target_updates,
        "start_update": outcome["start_update"],
        "updates": outcome["updates"],
        "epochs": outcome["updates"] / config.updates_per_epoch,
        "train_time_s": round(train_time, 3),
        "program_time_s": round(time.time() - program_start, 3),
        "updates_per_s": done / train_time if train_time > 0 else None,
        "test_accuracy": {"top1": final["top1"], "top5": final["top5"],
                          "update": final["update"]},
        "target_accuracy": target_accuracy,
        "target_reached": (final["top1"] >= target_accuracy
                           if target_accuracy else None),
        "eval_history": outcome["eval_history"],
        "checkpoint": outcome["checkpoint"],
        "rollbacks": outcome.get("rollbacks", []),
        "tensorboard_dir": os.path.join(run_dir, "tensorboard"),
        "pushes": None, "dropped": None, "wasted_share": None,
        "per_worker": None, "arrival": None, "pauses": None,
        "updates_per_s_steady": None, "sync_stats": outcome["sync_stats"],
        "plots": {},
    }
    plots_dir = os.path.join(run_dir, analysis.PLOTS_DIR)
    os.makedirs(plots_dir, exist_ok=True)
    if config.sync and os.path.exists(os.path.join(run_dir,
                                                   telemetry.PUSHES_FILE)):
        result, _ = analysis.run_analysis(
            run_dir, num_workers=config.total_num_replicas,
            replicas_to_aggregate=config.replicas_to_aggregate)
        summary.update(
            pushes=result["pushes"],
            dropped=sum(w["dropped"] for w in result["per_worker"]),
            wasted_share=result["wasted_share"],
            per_worker=per_worker_rows(result),
            arrival=arrival_rows(result),
            updates_per_s_steady=result["updates_per_s"],
            plots=dict(result["plots"]))
        if result["pauses"] is not None:
            summary["pauses"] = {k: result["pauses"][k] for k in (
                "count", "injected_s", "observed_s", "matched",
                "matched_injected_s")}
    accuracy_path = os.path.join(plots_dir, ACCURACY_PLOT)
    plot_accuracy(outcome["eval_history"], accuracy_path, target_accuracy)
    summary["plots"]["accuracy"] = accuracy_path
    return summary
