"""Does the simulator predict real runs? Calibrate on one, predict others.

    python -m benchmarks.simulator_validation [--reuse RUNS_DIR]

Runs each setting below with the real launcher (`python -m launch <spec>`,
digits, small CNN) on this machine, one after the other, then calibrates the
simulator (ps_sync/simulator.py) on the calibration setting only and predicts
the updates per second of every other setting from its (N, b, workers) and
the pauses the launcher injected (replayed from its stragglers.jsonl: the
pauses are inputs of the run, not outcomes). Writes
benchmarks/results/simulator_validation.json and .png.

`--reuse RUNS_DIR` skips the runs and reads `<RUNS_DIR>/<setting>/` from an
earlier invocation. The machine is shared: timings are noisy.
"""
import ps_sync.keras_env  # noqa: F401  (launcher children load TensorFlow)

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
OUT_JSON = os.path.join(RESULTS, "simulator_validation.json")
OUT_PNG = os.path.join(RESULTS, "simulator_validation.png")
RUN_TIMEOUT_S = 240

_MODERATE = {"every_s": {"distribution": "exponential", "mean": 2.0},
             "pause_s": {"distribution": "lognormal", "median": 1.0,
                         "sigma": 0.5}}
_HEAVY = {"every_s": {"distribution": "exponential", "mean": 1.5},
          "pause_s": {"distribution": "lognormal", "median": 2.0,
                      "sigma": 0.75}}

# The first setting is the calibration; the others are predicted. No N-of-N
# setting with pauses: a waiter stopped while its step closes can lose its
# wake-up to another worker (see the report), which hangs b = 0.
SETTINGS = [
    {"name": "cal-2of3-clean", "workers": 3, "n": 2, "updates": 500,
     "stragglers": []},
    {"name": "3of3-clean", "workers": 3, "n": 3, "updates": 300,
     "stragglers": []},
    {"name": "2of3-straggler", "workers": 3, "n": 2, "updates": 400,
     "stragglers": [dict(_MODERATE, task="worker-2", seed=11)]},
    {"name": "3of4-heavy", "workers": 4, "n": 3, "updates": 300,
     "stragglers": [dict(_HEAVY, task="worker-3", seed=3)]},
    {"name": "2of4-heavy", "workers": 4, "n": 2, "updates": 400,
     "stragglers": [dict(_HEAVY, task="worker-3", seed=3),
                    dict(_MODERATE, task="worker-1", seed=5)]},
    {"name": "4of4-clean", "workers": 4, "n": 4, "updates": 300,
     "stragglers": []},
    {"name": "3of4-moderate", "workers": 4, "n": 3, "updates": 300,
     "stragglers": [dict(_MODERATE, task="worker-3", seed=13)]},
    {"name": "2of3-heavy", "workers": 3, "n": 2, "updates": 300,
     "stragglers": [dict(_HEAVY, task="worker-2", seed=3)]},
    # Repeats: how far two runs of one setting differ on this machine.
    {"name": "cal-2of3-clean-repeat", "workers": 3, "n": 2, "updates": 500,
     "stragglers": []},
    {"name": "2of3-straggler-repeat", "workers": 3, "n": 2, "updates": 400,
     "stragglers": [dict(_MODERATE, task="worker-2", seed=11)]},
    # N=1: every push closes its step, nobody waits on the wake queue.
    {"name": "1of3-straggler", "workers": 3, "n": 1, "updates": 1000,
     "stragglers": [dict(_MODERATE, task="worker-2", seed=11)]},
]


def spec_for(setting):
    return {
        "name": "simval-" + setting["name"],
        "description": "simulator validation setting " + setting["name"],
        "cluster": {"chief": 1, "ps": 1, "worker": setting["workers"]},
        "sync": {"replicas_to_aggregate": setting["n"]},
        "program": {"command": ["python", "-m", "models.train"]},
        "stragglers": setting["stragglers"],
    }


def measure(setting, runs_dir):
    """Run one setting with the launcher; returns its run directory."""
    run_dir = os.path.join(runs_dir, setting["name"])
    os.makedirs(run_dir, exist_ok=True)
    spec_path = os.path.join(runs_dir, setting["name"] + ".spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec_for(setting), f, indent=1)
    # One training interval (no evaluation pauses mid-run), checkpoint only
    # at the end: the run is one stretch of steps, as simulated.
    cmd = [sys.executable, "-m", "launch", spec_path, "--run-dir", run_dir,
           "--quiet", "--", "--train_updates=%d" % setting["updates"],
           "--eval_every_updates=%d" % setting["updates"],
           "--checkpoint_every_updates=0"]
    env = dict(os.environ, PYTHONPATH=REPO)
    start = time.time()
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # The launcher stops every task on SIGTERM.
        proc.terminate()
        proc.wait(timeout=60)
        code = "timeout"
    print("%s: exit %s after %.0f s -> %s" % (setting["name"], code,
                                             time.time() - start, run_dir),
          flush=True)
    with open(os.path.join(run_dir, "benchmark_exit.json"), "w") as f:
        json.dump({"exit": code, "seconds": time.time() - start,
                   "load_before": load_before,
                   "load_after": os.getloadavg()[0]}, f)
    return run_dir


def predict_all(runs_dir, settings, seeds=5):
    """Calibrate on the first setting, predict the others; returns the
    results dict."""
    from ps_sync import sim_calibration as sc
    from ps_sync import simulator
    measured = {}
    exits = {}
    for setting in settings:
        run_dir = os.path.join(runs_dir, setting["name"])
        exit_path = os.path.join(run_dir, "benchmark_exit.json")
        if os.path.exists(exit_path):
            with open(exit_path) as f:
                exits[setting["name"]] = json.load(f)
        try:
            measured[setting["name"]] = sc.measure_run(run_dir)
        except (OSError, ValueError) as e:
            print("%s: not measured (%s)" % (setting["name"], e))
    cal_name = settings[0]["name"]
    if cal_name not in measured:
        raise SystemExit("the calibration run %s is missing" % cal_name)
    calibration = sc.calibrate(measured[cal_name])
    rows = []
    for setting in settings:
        name = setting["name"]
        m = measured.get(name)
        if m is None or m.updates_per_s is None:
            rows.append({"setting": name, "measured_updates_per_s": None,
                         "exit": exits.get(name, {}).get("exit"),
                         "measured_updates": m.updates if m else None,
                         "measured_duplicate_pushes": (m.duplicates if m
                                                       else None),
                         "reason": ("no run" if m is None else
                                    "too few updates while every worker "
                                    "pushed")})
            continue
        rates, wasted = [], []
        for seed in range(seeds):
            rate, result = sc.predict(calibration, m.num_workers,
                                      m.replicas_to_aggregate, m.pauses,
                                      m.duration_s, seed=seed)
            rates.append(rate)
            wasted.append(result.wasted_share)
        predicted = sum(rates) / len(rates)
        # Diagnostic, not a blind prediction: duplicates in the run mean a
        # waiter lost its wake-up on the shared queue (simulator docstring);
        # simulate the implementation with one wake-up lost from the start.
        lost = None
        if m.duplicates:
            lost_rates = []
            for seed in range(seeds):
                result = simulator.simulate(dataclasses.replace(
                    calibration.cluster(m.num_workers,
                                        m.replicas_to_aggregate, m.pauses),
                    shared_wake_queue=True, lost_wakeups=1),
                    duration_s=m.duration_s, seed=seed)
                lost_rates.append(sc.steady_rate(result.closes))
            lost = sum(lost_rates) / len(lost_rates)
        rows.append({
            "setting": name, "role": ("calibration" if name == cal_name
                                      else "prediction"),
            "workers": m.num_workers, "n": m.replicas_to_aggregate,
            "b": m.num_workers - m.replicas_to_aggregate,
            "stragglers": setting["stragglers"],
            "injected_pauses": len(m.pauses),
            "injected_pause_s": sum(e - s for _, s, e in m.pauses),
            "exit": exits.get(name, {}).get("exit"),
            "measured_updates": m.updates,
            "updates_in_run": m.updates_in_run,
            "measured_updates_per_s": m.updates_per_s,
            "predicted_updates_per_s": predicted,
            "predicted_updates_per_s_seeds": rates,
            "relative_error": predicted / m.updates_per_s - 1,
            "measured_wasted_share": m.wasted_share,
            "predicted_wasted_share": sum(wasted) / len(wasted),
            "measured_duplicate_pushes": m.duplicates,
            "first_duplicate_s": m.first_duplicate_s,
            "diagnostic_one_lost_wakeup_updates_per_s": lost,
            "diagnostic_relative_error": (lost / m.updates_per_s - 1
                                          if lost else None),
            "load_average_before_run": exits.get(name, {}).get(
                "load_before"),
            "duration_s": m.duration_s})
    predictions = [r for r in rows if r.get("role") == "prediction"]
    return {
        "calibration": calibration.summary(),
        "settings": rows,
        "within_15_percent": sum(1 for r in predictions
                                 if abs(r["relative_error"]) <= 0.15),
        "predicted_settings": len(predictions),
        "mean_abs_relative_error": (
            sum(abs(r["relative_error"]) for r in predictions)
            / len(predictions) if predictions else None),
        "runs_dir": runs_dir,
        "note": ("one run per setting on a 2-core machine shared with other "
                 "TensorFlow jobs (1-minute load average before each run in "
                 "the rows); rates are steady updates/s after the first %d "
                 "updates, within the window in which every worker pushed; "
                 "'simulated' is the blind prediction of the protocol as "
                 "designed (per-waiter wake-ups); the diagnostic column "
                 "simulates the shared wake queue with one wake-up lost from "
                 "the start, for runs that showed duplicate pushes"
                 % sc.WARMUP_UPDATES),
    }


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["settings"] if r.get("measured_updates_per_s")]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([x - 0.2 for x in xs], [r["measured_updates_per_s"] for r in rows],
           width=0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [r["predicted_updates_per_s"] for r in rows],
           width=0.4, label="simulated")
    lost = [(x, r["diagnostic_one_lost_wakeup_updates_per_s"])
            for x, r in zip(xs, rows)
            if r.get("diagnostic_one_lost_wakeup_updates_per_s")]
    if lost:
        ax.scatter([x + 0.2 for x, _ in lost], [v for _, v in lost],
                   marker="_", s=300, color="black", zorder=3,
                   label="simulated, 1 wake-up lost (diagnostic)")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["predicted_updates_per_s"], "%+.0f%%"
                % (100 * r["relative_error"]), ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["setting"] for r in rows], rotation=15, fontsize=8)
    ax.set_ylabel("updates per second")
    ax.set_title("Simulator calibrated on %s vs real runs (shared 2-core "
                 "machine)" % rows[0]["setting"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results):
    lines = ["%-16s %3s %3s %6s %10s %10s %7s %5s %s" % (
        "setting", "N", "b", "pauses", "measured", "simulated", "error",
        "dups", "(diagnostic: 1 wake-up lost)")]
    for r in results["settings"]:
        if r.get("measured_updates_per_s") is None:
            lines.append("%-16s  not usable: %s (exit %s, %s updates, %s "
                         "duplicate pushes)" % (
                             r["setting"], r["reason"], r.get("exit"),
                             r.get("measured_updates"),
                             r.get("measured_duplicate_pushes")))
            continue
        lost = r["diagnostic_one_lost_wakeup_updates_per_s"]
        lines.append("%-16s %3d %3d %6d %10.2f %10.2f %+6.1f%% %5d %s%s" % (
            r["setting"], r["n"], r["b"], r["injected_pauses"],
            r["measured_updates_per_s"], r["predicted_updates_per_s"],
            100 * r["relative_error"], r["measured_duplicate_pushes"],
            ("%.2f (%+.1f%%)" % (lost, 100 * r["diagnostic_relative_error"])
             if lost else ""),
            "  <- calibration" if r["role"] == "calibration" else ""))
    lines.append("within 15%%: %d of %d predicted settings"
                 % (results["within_15_percent"],
                    results["predicted_settings"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m "
                                     "benchmarks.simulator_validation")
    parser.add_argument("--reuse", help="runs directory of an earlier "
                        "invocation: predict without running")
    parser.add_argument("--runs_dir", default=None,
                        help="where runs go (default: runs/simval-<time>)")
    parser.add_argument("--only", help="comma-separated setting names")
    args = parser.parse_args(argv)
    settings = SETTINGS
    if args.only:
        settings = [s for s in SETTINGS if s["name"] in args.only.split(",")]
    if args.reuse:
        runs_dir = args.reuse
        if not os.path.isdir(runs_dir):
            parser.error("--reuse %r: no such directory" % runs_dir)
    else:
        runs_dir = args.runs_dir or os.path.join(
            REPO, "runs", "simval-" + time.strftime("%Y%m%d-%H%M%S"))
        for setting in settings:
            measure(setting, runs_dir)
    results = predict_all(runs_dir, SETTINGS)
    os.makedirs(RESULTS, exist_ok=True)
    with open(OUT_JSON, "w") as f:
        json.dump(results, f, indent=1)
    plot(results, OUT_PNG)
    print(report(results))
    print("wrote %s and %s" % (OUT_JSON, OUT_PNG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
