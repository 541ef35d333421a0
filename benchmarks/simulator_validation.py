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
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
OUT_JSON = os.path.join(RESULTS, "simulator_validation.json")
OUT_PNG = os.path.join(RESULTS, "simulator_validation.png")
RUN_TIMEOUT_S = 300

_MODERATE = {"every_s": {"distribution": "exponential", "mean": 2.0},
             "pause_s": {"distribution": "lognormal", "median": 1.0,
                         "sigma": 0.5}}
_HEAVY = {"every_s": {"distribution": "exponential", "mean": 1.5},
          "pause_s": {"distribution": "lognormal", "median": 2.0,
                      "sigma": 0.75}}

# The first setting is the calibration; the others are predicted.
SETTINGS = [
    {"name": "cal-2of3-clean", "workers": 3, "n": 2, "updates": 500,
     "stragglers": []},
    {"name": "3of3-straggler", "workers": 3, "n": 3, "updates": 200,
     "stragglers": [dict(_MODERATE, task="worker-2", seed=11)]},
    {"name": "2of3-straggler", "workers": 3, "n": 2, "updates": 400,
     "stragglers": [dict(_MODERATE, task="worker-2", seed=11)]},
    {"name": "3of4-heavy", "workers": 4, "n": 3, "updates": 300,
     "stragglers": [dict(_HEAVY, task="worker-3", seed=3)]},
    {"name": "4of4-clean", "workers": 4, "n": 4, "updates": 300,
     "stragglers": []},
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
    code = subprocess.call(cmd, cwd=REPO, env=env, timeout=RUN_TIMEOUT_S)
    print("%s: exit %d after %.0f s -> %s" % (setting["name"], code,
                                             time.time() - start, run_dir),
          flush=True)
    if code != 0:
        raise RuntimeError("run %s failed (exit %d); see %s"
                           % (setting["name"], code, run_dir))
    return run_dir


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
