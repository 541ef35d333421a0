"""Chaos: random tasks killed on a schedule during a digits run.

  python -m benchmarks.chaos [--updates 1500] [--fault_every_s 15] [--seed 0]

Two runs of the same launched job (1 chief, 1 PS, 3 workers, N=2, b=1,
checkpoints every K updates), one after the other on this machine: one
fault-free, one where a chaos thread SIGKILLs a random task (a worker, the
parameter server or the chief, by `--weights`) after each exponentially
distributed interval until 85% of the updates are applied, while the
launcher restarts what died. Per fault it
reports, from the run's own records (launcher events, telemetry, rollback
of the step counter):
  - updates lost: for a PS or chief kill, the updates the first coordinator
    applied past the checkpoint the next one restored (at most K); a worker
    kill loses none (the backups carry the steps);
  - seconds to recover: PS/chief: from the kill to the first update of the
    restarted coordinator; worker: from the kill to the restarted worker's
    first admitted gradient (updates never stop meanwhile: the longest gap
    between updates around the fault is reported too).
And for both runs: wall time, updates, final test accuracy. Writes
benchmarks/results/chaos.json and chaos.png.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ps_sync.local_cluster import REPO_ROOT

RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")
TASKS = {"worker": ["worker-0", "worker-1", "worker-2"], "ps": ["ps-0"],
         "chief": ["chief-0"]}


def _spec(max_restarts):
    return {"name": "chaos",
            "cluster": {"chief": 1, "ps": 1, "worker": 3},
            "sync": {"replicas_to_aggregate": 2},
            "program": {"command": ["python", "-m", "models.train"]},
            "restart": {"max_restarts": max_restarts}}


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


class Chaos(threading.Thread):
    """Kills a random task after each exponential interval."""

    def __init__(self, run_dir, rng, every_s, weights, max_faults,
                 stop_at_update):
        super().__init__(daemon=True)
        self.stop_at_update = stop_at_update
        self.run_dir, self.rng = run_dir, rng
        self.every_s, self.weights = every_s, weights
        self.max_faults = max_faults
        self.faults = []
        self.stop = threading.Event()

    def _live_pid(self, task):
        starts = [e for e in _read_jsonl(os.path.join(self.run_dir,
                                                      "events.jsonl"))
                  if e["task"] == task and e["event"] == "start"]
        return starts[-1]["pid"] if starts else None

    def _training(self):
        """While the program trains (a checkpoint exists to restart from,
        updates are being applied) and until it nears its target (a fault
        after training measures nothing)."""
        if not os.path.exists(os.path.join(self.run_dir, "checkpoints",
                                           "checkpoint")):
            return False
        steps = _read_jsonl(os.path.join(self.run_dir, "steps.jsonl"))
        if steps and steps[-1]["step"] >= self.stop_at_update:
            self.stop.set()
            return False
        # Training now (an update in the last 3 s), not recovering from the
        # last fault: each fault hits a working cluster.
        return bool(steps) and time.time() - steps[-1]["closed_at"] < 3.0

    def run(self):
        while len(self.faults) < self.max_faults:
            if self.stop.wait(self.rng.expovariate(1.0 / self.every_s)):
                return
            if not self._training():
                continue
            role = self.rng.choices(list(self.weights),
                                    weights=list(self.weights.values()))[0]
            task = self.rng.choice(TASKS[role])
            pid = self._live_pid(task)
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.faults.append({"time": time.time(), "task": task,
                                "role": role})


def launch_run(run_dir, updates, k, chaos=None, timeout=1800):
    os.makedirs(run_dir, exist_ok=True)
    spec_path = os.path.join(run_dir, "..", os.path.basename(run_dir)
                             + "-spec.json")
    with open(spec_path, "w") as f:
        json.dump(_spec(max_restarts=50), f)
    start = time.time()
    with open(run_dir + ".out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch", spec_path, "--run-dir", run_dir,
             "--quiet", "--", "--train_updates=%d" % updates,
             "--checkpoint_every_updates=%d" % k,
             "--eval_every_updates=%d" % max(20, updates // 5)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT))
        if chaos is not None:
            chaos.start()
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if chaos is not None:
                chaos.stop.set()
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return code, time.time() - start


def analyse(run_dir, faults, k):
    """Per-fault losses and recovery times from the run's records."""
    steps = _read_jsonl(os.path.join(run_dir, "steps.jsonl"))
    pushes = _read_jsonl(os.path.join(run_dir, "pushes.jsonl"))
    runs = []
    for s in steps:
        if not runs or runs[-1]["run_id"] != s["run_id"]:
            runs.append({"run_id": s["run_id"], "steps": []})
        runs[-1]["steps"].append(s)
    closes = sorted(s["closed_at"] for s in steps)
    out = []
    for f in faults:
        t = f["time"]
        row = dict(f)
        after = [c for c in closes if c > t]
        before = [c for c in closes if c <= t]
        row["gap_s"] = ((after[0] - before[-1]) if after and before
                        else None)
        if f["role"] == "worker":
            w = int(f["task"].rsplit("-", 1)[1])
            back = [p["arrived_at"] for p in pushes if p["worker"] == w
                    and p["arrived_at"] > t
                    and p["outcome"].startswith("admitted")]
            row["recover_s"] = (min(back) - t) if back else None
            row["updates_lost"] = 0
        else:
            old = [r for r in runs if r["steps"][0]["closed_at"] < t]
            new = [r for r in runs if r["steps"][0]["closed_at"] > t]
            if old and new:
                last = old[-1]["steps"][-1]["step"]
                restored = new[0]["steps"][0]["step"]
                row["updates_lost"] = max(0, last + 1 - restored)
                row["recover_s"] = new[0]["steps"][0]["closed_at"] - t
            else:
                row["updates_lost"] = row["recover_s"] = None
        out.append(row)
    return out, [(s["closed_at"], s["step"]) for s in steps]


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    return {"updates": s["updates"], "top1": s["test_accuracy"]["top1"],
            "train_time_s": s["train_time_s"]}


def plot(clean_curve, chaos_curve, faults, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for curve, label in ((clean_curve, "fault-free"), (chaos_curve, "chaos")):
        if curve:
            t0 = curve[0][0]
            ax.plot([t - t0 for t, _ in curve], [s for _, s in curve], ".",
                    markersize=2, label=label)
    if chaos_curve:
        t0 = chaos_curve[0][0]
        colors = {"worker": "tab:green", "ps": "tab:red", "chief": "tab:purple"}
        for f in faults:
            ax.axvline(f["time"] - t0, color=colors[f["role"]], alpha=0.6,
                       linewidth=1)
            ax.annotate(f["task"], (f["time"] - t0, 0), rotation=90,
                        fontsize=7, xytext=(2, 5), textcoords="offset points")
    ax.set_xlabel("seconds since the first update")
    ax.set_ylabel("global step (applied update)")
    ax.set_title("Updates with tasks killed (vertical lines) vs fault-free")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--checkpoint_every", type=int, default=20)
    parser.add_argument("--fault_every_s", type=float, default=15.0)
    parser.add_argument("--max_faults", type=int, default=8)
    parser.add_argument("--weights", default="worker=3,ps=1,chief=1",
                        help="relative odds of each role being killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(RESULTS, "chaos"))
    args = parser.parse_args(argv)
    try:
        weights = {role: float(w) for role, w in
                   (item.split("=") for item in args.weights.split(","))}
        assert weights and set(weights) <= set(TASKS)
        assert all(w >= 0 for w in weights.values()) and sum(weights.values())
    except (ValueError, AssertionError):
        parser.error("--weights: expected role=odds pairs over worker, ps "
                     "and chief, e.g. worker=3,ps=1,chief=1; got %r"
                     % args.weights)
    if args.updates < 1 or args.checkpoint_every < 1 or args.fault_every_s <= 0:
        parser.error("--updates and --checkpoint_every must be positive, "
                     "--fault_every_s above 0")
    work = tempfile.mkdtemp(prefix="ps_sync_chaos_")
    load = [os.getloadavg()[0]]
    clean_dir = os.path.join(work, "fault-free")
    code, clean_wall = launch_run(clean_dir, args.updates,
                                  args.checkpoint_every)
    if code:
        sys.exit("the fault-free run failed (exit %d); see %s.out"
                 % (code, clean_dir))
    chaos_dir = os.path.join(work, "chaos")
    chaos = Chaos(chaos_dir, random.Random(args.seed), args.fault_every_s,
                  weights, args.max_faults, int(0.85 * args.updates))
    code, chaos_wall = launch_run(chaos_dir, args.updates,
                                  args.checkpoint_every, chaos)
    load.append(os.getloadavg()[0])
    faults, chaos_curve = analyse(chaos_dir, chaos.faults,
                                  args.checkpoint_every)
    _, clean_curve = analyse(clean_dir, [], args.checkpoint_every)
    result = {
        "command": "python -m benchmarks.chaos " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "machine": {"cores": os.cpu_count(), "load_avg_1m": load,
                    "note": "one machine, runs one after the other"},
        "settings": vars(args), "work_dir": work,
        "fault_free": dict(_summary(clean_dir), wall_s=clean_wall),
        "chaos": dict(exit_code=code, wall_s=chaos_wall,
                      **(_summary(chaos_dir) if code == 0 else {})),
        "faults": faults,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(clean_curve, chaos_curve, faults, args.out + ".png")
    print(report(result))
    return 0 if code == 0 else 1


def _fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def report(result):
    lines = ["| fault | task | updates lost | recover s | longest update gap s |",
             "|---|---|---|---|---|"]
    for i, f in enumerate(result["faults"], 1):
        lines.append("| %d | %s | %s | %s | %s |" % (
            i, f["task"], _fmt(f["updates_lost"], "%d"),
            _fmt(f["recover_s"]), _fmt(f["gap_s"])))
    a, b = result["fault_free"], result["chaos"]
    lines.append("")
    lines.append("| run | wall s | updates | test precision@1 |")
    lines.append("|---|---|---|---|")
    for name, r in (("fault-free", a), ("chaos", b)):
        lines.append("| %s | %.0f | %s | %s |" % (
            name, r["wall_s"], r.get("updates", "-"),
            _fmt(r.get("top1"), "%.3f")))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
