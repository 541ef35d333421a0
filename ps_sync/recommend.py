"""Choose N and b for a fixed number of machines: minimise the predicted
time to converge.

    python -m ps_sync.recommend --machines 100 [--times paper] [--curve FILE]

With M machines, one worker each, N + b = M. For each b the simulator
(ps_sync/simulator.py) predicts the mean step time of N-of-(N+b) training
from the worker-time distribution; a curve of steps-to-converge against the
total batch size (N x batch per worker) gives the steps. Predicted time to
converge = steps(N x batch) x mean step time, which trades the extra steps
of a smaller N against the shorter steps that backups buy, as the paper did
when it chose 96 + 4 of 100 machines.

Worker times (`--times`): `paper` (the heavy tail calibrated to the paper's
"80% of the second-to-last and 30% of the last of 100 gradients within 2 s",
simulator.calibrate_paper_tail), `run:DIR` (step times measured in a run
directory), `lognormal:MEDIAN,SIGMA`, `exponential:MEAN`, `fixed:SECONDS`.

Curve (`--curve FILE`, JSON): either measured points
    {"source": "...", "points": [{"total_batch": 256, "steps": 900}, ...]}
interpolated log-log (extrapolated along the end segments), or the
parametric form {"source": "...", "steps_min": S, "noise_batch": B}:
steps(batch) = S (1 + B / batch) (the critical-batch model of McCandlish et
al. 2018). Without --curve the parametric default below is used; it is an
ASSUMPTION, labelled as such in the output.
"""
import argparse
import json
import math
import os
import statistics
import sys

from ps_sync import simulator

# Assumed, not measured: Inception-scale step counts with diminishing
# returns past a total batch of a few thousand examples.
DEFAULT_CURVE = {"source": "assumed (not measured): critical-batch model",
                 "steps_min": 25000, "noise_batch": 1600}


class Curve:
    """Steps to converge as a function of the total batch size."""

    def __init__(self, config, origin="curve"):
        self.source = config.get("source", "unspecified")
        self.config = config
        if "points" in config:
            points = config["points"]
            if not isinstance(points, list) or len(points) < 2:
                raise ValueError("%s: field points: expected a list of at "
                                 "least 2 {total_batch, steps} objects"
                                 % origin)
            try:
                self.points = sorted((float(p["total_batch"]),
                                      float(p["steps"])) for p in points)
            except (KeyError, TypeError, ValueError):
                raise ValueError("%s: field points: every point needs numeric "
                                 "total_batch and steps" % origin) from None
            if any(b <= 0 or s <= 0 for b, s in self.points):
                raise ValueError("%s: field points: total_batch and steps "
                                 "must be positive" % origin)
            if len({b for b, _ in self.points}) != len(self.points):
                raise ValueError("%s: field points: duplicate total_batch"
                                 % origin)
            self.kind = "points"
        elif "steps_min" in config and "noise_batch" in config:
            try:
                self.steps_min = float(config["steps_min"])
                self.noise_batch = float(config["noise_batch"])
            except (TypeError, ValueError):
                raise ValueError("%s: fields steps_min and noise_batch must be "
                                 "numbers" % origin) from None
            if self.steps_min <= 0 or self.noise_batch < 0:
                raise ValueError("%s: need steps_min > 0 and noise_batch >= 0"
                                 % origin)
            self.kind = "critical_batch"
        else:
            raise ValueError("%s: expected field points, or fields steps_min "
                             "and noise_batch" % origin)

    def steps(self, batch):
        if self.kind == "critical_batch":
            return self.steps_min * (1 + self.noise_batch / batch)
        pts = self.points
        i = 1
        while i < len(pts) - 1 and batch > pts[i][0]:
            i += 1
        (b0, s0), (b1, s1) = pts[i - 1], pts[i]
        slope = (math.log(s1) - math.log(s0)) / (math.log(b1) - math.log(b0))
        return s0 * math.exp(slope * (math.log(batch) - math.log(b0)))


def load_curve(path):
    if path is None:
        return Curve(DEFAULT_CURVE, "default curve")
    try:
        with open(path) as f:
            config = json.load(f)
    except OSError as e:
        raise ValueError("--curve %s: cannot read it (%s)" % (path,
                                                             e.strerror))
    except ValueError as e:
        raise ValueError("--curve %s: not valid JSON (%s)" % (path, e))
    if not isinstance(config, dict):
        raise ValueError("--curve %s: expected a JSON object" % path)
    return Curve(config, path)


def parse_times(spec, machines, paper_sigma=0.25):
    """A worker-time distribution from a --times value."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "paper" and not arg:
            cal = simulator.calibrate_paper_tail(sigma=paper_sigma)
            return (simulator.paper_tail(machines, sigma=paper_sigma),
                    "paper heavy tail (sigma %g assumed: normal machines "
                    "median %.3f s, 1 in 100 slow, median %.3f s)"
                    % (paper_sigma, cal["fast_median_s"],
                       cal["slow_median_s"]))
        if kind == "run" and arg:
            from ps_sync import sim_calibration
            measured = sim_calibration.measure_run(arg)
            return (simulator.Empirical(measured.step_times),
                    "step times of %s" % arg)
        values = [float(x) for x in arg.split(",")] if arg else []
        if kind == "lognormal" and len(values) == 2:
            return simulator.LogNormal(*values), spec
        if kind == "exponential" and len(values) == 1 and values[0] > 0:
            return simulator.Exponential(1.0 / values[0]), spec
        if kind == "fixed" and len(values) == 1 and values[0] > 0:
            return simulator.Fixed(values[0]), spec
    except ValueError as e:
        raise ValueError("--times %s: %s" % (spec, e)) from None
    raise ValueError("--times %s: expected paper, run:DIR, "
                     "lognormal:MEDIAN,SIGMA, exponential:MEAN or "
                     "fixed:SECONDS" % spec)


def evaluate(machines, worker_times, curve, batch_per_worker, backups,
             updates=300, seeds=3, push_cost_s=0.0, apply_cost_s=0.0,
             wake_s=0.0):
    """One row per b in `backups`: N, b, steps, step time, time to
    converge."""
    rows = []
    for b in backups:
        n = machines - b
        step_times = []
        for seed in range(seeds):
            result = simulator.simulate(simulator.Cluster(
                num_workers=machines, worker_times=worker_times,
                replicas_to_aggregate=n, push_cost_s=push_cost_s,
                apply_cost_s=apply_cost_s, wake_s=wake_s),
                updates=updates, seed=seed)
            step_times.append(result.closes[-1] / result.updates)
        step_s = statistics.fmean(step_times)
        steps = curve.steps(n * batch_per_worker)
        rows.append({"n": n, "b": b, "total_batch": n * batch_per_worker,
                     "steps_to_converge": steps, "mean_step_s": step_s,
                     "step_s_stderr": (statistics.stdev(step_times)
                                       / math.sqrt(seeds) if seeds > 1
                                       else None),
                     "updates_per_s": 1.0 / step_s,
                     "time_to_converge_h": steps * step_s / 3600})
    best = min(rows, key=lambda r: r["time_to_converge_h"])
    for r in rows:
        r["vs_best"] = r["time_to_converge_h"] / best["time_to_converge_h"]
    return rows, best


def table(rows, best):
    lines = ["  N    b   batch  steps to converge  step (s)  updates/s  "
             "time to converge (h)  vs best"]
    for r in rows:
        lines.append("%4d %4d %7d %18.0f %9.3f %10.3f %21.2f %8.3f%s" % (
            r["n"], r["b"], r["total_batch"], r["steps_to_converge"],
            r["mean_step_s"], r["updates_per_s"], r["time_to_converge_h"],
            r["vs_best"], "  <- best" if r is best else ""))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ps_sync.recommend",
        description="Choose N and b (N + b = machines) minimising predicted "
        "time to converge.")
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--times", default="paper",
                        help="worker times: paper, run:DIR, "
                        "lognormal:MEDIAN,SIGMA, exponential:MEAN, "
                        "fixed:SECONDS (default: %(default)s)")
    parser.add_argument("--paper_sigma", type=float, default=0.25,
                        help="--times paper: assumed log-standard deviation "
                        "of every machine's times (default: %(default)s)")
    parser.add_argument("--curve", help="steps-to-converge JSON (default: an "
                        "assumed critical-batch curve)")
    parser.add_argument("--batch_per_worker", type=int, default=32)
    parser.add_argument("--max_backups", type=int, default=10)
    parser.add_argument("--updates", type=int, default=300,
                        help="simulated updates per (N, b) and seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--push_cost_s", type=float, default=0.0)
    parser.add_argument("--apply_cost_s", type=float, default=0.0)
    parser.add_argument("--json", help="also write the table and inputs here")
    args = parser.parse_args(argv)
    if args.machines < 1:
        parser.error("--machines must be at least 1, got %d" % args.machines)
    if not 0 <= args.max_backups < args.machines:
        parser.error("--max_backups must be between 0 and machines - 1 "
                     "(%d), got %d" % (args.machines - 1, args.max_backups))
    for name in ("batch_per_worker", "updates", "seeds"):
        if getattr(args, name) < 1:
            parser.error("--%s must be at least 1" % name)
    if not 0 < args.paper_sigma < 2:
        parser.error("--paper_sigma must be in (0, 2), got %g"
                     % args.paper_sigma)
    if args.times.startswith("run:") and not os.path.isdir(args.times[4:]):
        parser.error("--times %s: run directory does not exist" % args.times)
    try:
        curve = load_curve(args.curve)
        times, times_label = parse_times(args.times, args.machines,
                                         args.paper_sigma)
    except ValueError as e:
        parser.error(str(e))
    rows, best = evaluate(args.machines, times, curve, args.batch_per_worker,
                          range(args.max_backups + 1), args.updates,
                          args.seeds, args.push_cost_s, args.apply_cost_s)
    header = ("%d machines, worker times: %s; steps-to-converge curve: %s "
              "(%s); batch %d per worker; %d simulated updates x %d seeds "
              "per row" % (args.machines, times_label, curve.source,
                           args.curve or "built-in default",
                           args.batch_per_worker, args.updates, args.seeds))
    text = "%s\n%s\nrecommended: N=%d, b=%d\n" % (header, table(rows, best),
                                                   best["n"], best["b"])
    sys.stdout.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machines": args.machines, "times": times_label,
                       "curve": curve.config, "curve_file": args.curve,
                       "batch_per_worker": args.batch_per_worker,
                       "updates": args.updates, "seeds": args.seeds,
                       "rows": rows, "recommended": {"n": best["n"],
                                                     "b": best["b"]},
                       "text": text}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
