"""AdaptiveQuorum against fixed numbers of backups, in the simulator.

    python -m benchmarks.adaptive_quorum_sim [--seeds 2]

100 machines, one worker each. Fixed policies run N = 100 - b for several
b; the adaptive policy (ps_sync.quorum.AdaptiveQuorum, the same object the
coordinator's watchdog runs, polled every 50 ms like it and fed the exact
arrivals of the PS log like it) runs N = 100 and lowers each step's quorum
down to at least 70. Updates differ in size, so
the yardstick is predicted time to converge: each update of k gradients
advances 1 / steps(32 k) of the way (the steps-to-converge curve of
ps_sync.recommend, an ASSUMED critical-batch curve by default), and time to
converge = simulated time / progress made in it.

Scenarios:
- paper_tail: the heavy tail calibrated to the paper (simulator.paper_tail).
- shifting: normal machines LogNormal(1 s, 0.1); for the first half of the
  run nothing else, for the second half 8 machines are paused (exponential
  every 2 s, pauses lognormal median 3 s): the best fixed b differs between
  the halves.

Writes benchmarks/results/adaptive_quorum_sim.json and prints a table.
Simulated, not measured.
"""
import argparse
import json
import math
import os
import statistics
import sys

from ps_sync import quorum
from ps_sync import recommend
from ps_sync import simulator

MACHINES = 100
BATCH = 32
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def shifting_pauses(duration_s, seed):
    entries = [{"task": "worker-%d" % w,
                "every_s": {"distribution": "exponential", "mean": 2.0},
                "pause_s": {"distribution": "lognormal", "median": 3.0,
                            "sigma": 0.5},
                "seed": w} for w in range(MACHINES - 8, MACHINES)]
    half = duration_s / 2
    return tuple((w, s + half, e + half)
                 for w, s, e in simulator.pauses_from_spec(entries, half,
                                                           seed))


SCENARIOS = {
    "paper_tail": {"times": lambda: simulator.paper_tail(MACHINES),
                   "pauses": lambda duration, seed: (), "duration_s": 600.0},
    "shifting": {"times": lambda: simulator.LogNormal(1.0, 0.1),
                 "pauses": shifting_pauses, "duration_s": 800.0},
}


def run(scenario, policy_name, n, policy, curve, seed):
    spec = SCENARIOS[scenario]
    result = simulator.simulate(simulator.Cluster(
        num_workers=MACHINES, worker_times=spec["times"](),
        replicas_to_aggregate=n,
        pauses=spec["pauses"](spec["duration_s"], seed),
        quorum_policy=policy), duration_s=spec["duration_s"], seed=seed)
    progress = sum(1.0 / curve.steps(k * BATCH) for k in result.quorums)
    return {"scenario": scenario, "policy": policy_name, "n": n,
            "seed": seed, "updates": result.updates,
            "mean_quorum": statistics.fmean(result.quorums),
            "min_quorum": min(result.quorums),
            "updates_per_s": result.updates / spec["duration_s"],
            "time_to_converge_h": spec["duration_s"] / progress / 3600}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m "
                                     "benchmarks.adaptive_quorum_sim")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--curve", help="steps-to-converge JSON "
                        "(default: recommend's assumed curve)")
    args = parser.parse_args(argv)
    try:
        curve = recommend.load_curve(args.curve)
    except ValueError as e:
        parser.error(str(e))
    # The curve's local elasticity at 32 x 100 examples, for gain_exponent.
    b0 = BATCH * MACHINES
    elasticity = min(1.0, max(0.01, math.log(curve.steps(b0 * 0.9)
                                             / curve.steps(b0))
                              / -math.log(0.9)))
    rows = []
    for scenario in SCENARIOS:
        configs = [("fixed b=%d" % b, MACHINES - b, None)
                   for b in (0, 1, 2, 4, 8, 12, 16, 20, 26)]
        configs += [
            ("adaptive gain k", MACHINES,
             lambda: quorum.AdaptiveQuorum(70)),
            ("adaptive gain k^%.2f" % elasticity, MACHINES,
             lambda: quorum.AdaptiveQuorum(70, gain_exponent=elasticity)),
        ]
        for name, n, make in configs:
            per_seed = [run(scenario, name, n, make() if make else None,
                            curve, seed) for seed in range(args.seeds)]
            row = dict(per_seed[0], seed=None)
            for key in ("updates", "mean_quorum", "updates_per_s",
                        "time_to_converge_h"):
                row[key] = statistics.fmean(r[key] for r in per_seed)
            row["min_quorum"] = min(r["min_quorum"] for r in per_seed)
            rows.append(row)
            print("%-10s %-22s N=%3d  updates/s %.3f  mean quorum %5.1f  "
                  "time to converge %.2f h" % (
                      scenario, name, n, row["updates_per_s"],
                      row["mean_quorum"], row["time_to_converge_h"]),
                  flush=True)
    summary = {}
    for scenario in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == scenario]
        fixed = min((r for r in mine if r["policy"].startswith("fixed")),
                    key=lambda r: r["time_to_converge_h"])
        adaptive = min((r for r in mine if r["policy"].startswith("adapt")),
                       key=lambda r: r["time_to_converge_h"])
        summary[scenario] = {
            "best_fixed": fixed["policy"],
            "best_fixed_h": fixed["time_to_converge_h"],
            "best_adaptive": adaptive["policy"],
            "best_adaptive_h": adaptive["time_to_converge_h"],
            "adaptive_over_best_fixed": (adaptive["time_to_converge_h"]
                                         / fixed["time_to_converge_h"])}
        print("%s: best fixed %s %.2f h, best adaptive %s %.2f h (ratio "
              "%.3f)" % (scenario, fixed["policy"],
                         fixed["time_to_converge_h"], adaptive["policy"],
                         adaptive["time_to_converge_h"],
                         summary[scenario]["adaptive_over_best_fixed"]))
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "adaptive_quorum_sim.json")
    with open(path, "w") as f:
        json.dump({"machines": MACHINES, "batch_per_worker": BATCH,
                   "curve": curve.config, "seeds": args.seeds,
                   "note": "simulated, not measured; curve assumed unless "
                   "--curve was given", "rows": rows, "summary": summary},
                  f, indent=1)
    print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
