"""Straggler efficiency: measured synchronous step time against the ideal
step time of an N-of-(N+b) quorum under the injected pauses.

  python -m benchmarks.straggler_efficiency [--workers 4] [--backups 0,1]
      [--seeds 0,1] [--train_updates 150]

For each variant (b backups: N = W - b of W workers) and seed, two real
local clusters (launcher, 1 chief, 1 PS, W worker processes, small_cnn on
digits with models.train --mode=sync) run in this invocation, one after the
other:
  clean     no injected pauses;
  injected  the straggler entries of `--stragglers` (default:
            cluster_specs/local_straggler.json, put on the last workers),
            SIGSTOP/SIGCONT by the launcher, logged to stragglers.jsonl.
Variants and seeds are interleaved round-robin. Training is one evaluation
interval (`--eval_every_updates` = `--train_updates`), no periodic
checkpoints, so nothing but the protocol sits between steps.

Definitions (all from the run directories; times in seconds):
- Step t's window is (closed_at[t-1], closed_at[t]] from steps.jsonl, and
  its measured time is the window's length. The first `--warmup_steps`
  steps of each run (tracing, first pushes) are left out of every mean.
- The step time without stragglers, `base`, is the mean measured step time
  of the paired clean run (same W, N, seed, number of updates).
- Injected delay of worker w in step t: the total overlap of its pauses
  (stragglers.jsonl, pause to resume) with step t's window; workers without
  pauses have 0. d_N(t) is the N-th smallest of the W delays: the step
  cannot close before N workers are running, so an ideal protocol would
  take base + d_N(t).
- ideal(t) = base + d_N(t); efficiency ratio = mean measured step time of
  the injected run / mean ideal(t). 1.0 is ideal; the issue's target is
  <= 1.1 for b >= 1 (reported, not a gate). Also reported: the injected
  run's mean step time over base (the raw slowdown).
A pause delays the worker's current computation and then its gradient is
often stale (dropped), so the ideal is optimistic by design. A run that
fails or outlives `--timeout_s` is stopped and listed under `failed` with
its error (`run_errors`); the steps its telemetry recorded are still
measured, and a pair with no measurable steps is listed under `failed`.
"""
from benchmarks import common  # first: pins Keras 2 before TensorFlow

import argparse
import os
import sys

DEFAULT_STRAGGLERS = os.path.join(common.REPO_ROOT, "cluster_specs",
                                  "local_straggler.json")


def read_pauses(run_dir):
    """{worker: [(start, end)]} of completed pauses."""
    out = {}
    for r in common.read_jsonl(os.path.join(run_dir, "stragglers.jsonl")):
        if r.get("event") == "resume":
            worker = int(r["task"].rsplit("-", 1)[1])
            out.setdefault(worker, []).append((r["paused_at"], r["time"]))
    return out


def step_windows(run_dir, warmup):
    """[(step, start, end)] of consecutive closed steps, warm-up left out."""
    steps = sorted(common.read_jsonl(os.path.join(run_dir, "steps.jsonl")),
                   key=lambda s: s["step"])
    out = []
    for prev, cur in zip(steps, steps[1:]):
        if cur["step"] == prev["step"] + 1 and cur["run_id"] == \
                prev["run_id"] and cur["step"] >= warmup:
            out.append((cur["step"], prev["closed_at"], cur["closed_at"]))
    return out


def overlap(pauses, start, end):
    return sum(max(0.0, min(end, e) - max(start, s)) for s, e in pauses)


def efficiency(clean_dir, injected_dir, workers, n, warmup):
    clean = step_windows(clean_dir, warmup)
    injected = step_windows(injected_dir, warmup)
    if not clean or not injected:
        raise common.BenchmarkError("too few steps after %d warm-up steps "
                                    "(clean %d, injected %d)"
                                    % (warmup, len(clean), len(injected)))
    base = common.mean([e - s for _, s, e in clean])
    pauses = read_pauses(injected_dir)
    per_step = []
    for step, s, e in injected:
        delays = sorted(overlap(pauses.get(w, []), s, e)
                        for w in range(workers))
        per_step.append({"step": step, "measured_s": e - s,
                         "nth_delay_s": delays[n - 1],
                         "ideal_s": base + delays[n - 1],
                         "max_delay_s": delays[-1]})
    measured = common.mean([p["measured_s"] for p in per_step])
    ideal = common.mean([p["ideal_s"] for p in per_step])
    return {"base_step_s": base, "clean_steps": len(clean),
            "injected_steps": len(per_step),
            "measured_step_s": measured, "ideal_step_s": ideal,
            "mean_nth_delay_s": common.mean([p["nth_delay_s"]
                                             for p in per_step]),
            "mean_max_delay_s": common.mean([p["max_delay_s"]
                                             for p in per_step]),
            "steps_with_nth_delay": sum(p["nth_delay_s"] > 0
                                        for p in per_step),
            "efficiency_ratio": measured / ideal,
            "slowdown_vs_clean": measured / base,
            "pauses": sum(len(v) for v in pauses.values()),
            "paused_s": sum(e - s for v in pauses.values() for s, e in v),
            "per_step": per_step}


def run_dir_of(args, b, seed, kind):
    return os.path.join(args.run_root, "eff-b%d-%s-s%d" % (b, kind, seed))


def run_pair_member(args, b, seed, kind):
    n = args.workers - b
    stragglers = (common.with_seed(args.straggler_entries, seed)
                  if kind == "injected" else [])
    run_dir = run_dir_of(args, b, seed, kind)
    spec = common.base_spec(os.path.basename(run_dir), args.workers, n,
                            stragglers, keepalive_ms=args.grpc_keepalive_ms)
    flags = ["--mode=sync", "--seed=%d" % seed,
             "--train_updates=%d" % args.train_updates,
             "--eval_every_updates=%d" % args.train_updates,
             "--checkpoint_every_updates=0"]
    return common.launch(spec, run_dir, flags, args.timeout_s)


def plot(results, path):
    plt = common.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for r, colour in zip(results, ["tab:blue", "tab:green", "tab:red",
                                   "tab:purple", "tab:orange", "tab:brown"]):
        label = "b=%d seed %d" % (r["backups"], r["seed"])
        ps = r["per_step"]
        ax.plot([p["step"] for p in ps], [p["measured_s"] for p in ps],
                color=colour, alpha=0.6, linewidth=0.8,
                label=label + " measured")
        ax.plot([p["step"] for p in ps], [p["ideal_s"] for p in ps],
                color=colour, linestyle=":", linewidth=1,
                label=label + " ideal")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("step time (s)")
    ax.set_title("injected runs: measured vs base + N-th smallest delay")
    ax.legend(fontsize=6)
    labels = ["b=%d\nseed %d" % (r["backups"], r["seed"]) for r in results]
    x = range(len(results))
    bx.bar(x, [r["efficiency_ratio"] for r in results], color="tab:blue",
           alpha=0.7, label="measured / ideal")
    bx.scatter(x, [r["slowdown_vs_clean"] for r in results], color="tab:red",
               zorder=3, label="measured / clean")
    bx.axhline(1.1, color="grey", linestyle="--", linewidth=1,
               label="target 1.1")
    bx.set_xticks(list(x))
    bx.set_xticklabels(labels, fontsize=8)
    bx.set_ylabel("ratio of mean step times")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.straggler_efficiency",
        description="Measured sync step time over base + N-th smallest "
        "injected delay, from real local clusters.")
    p.add_argument("--workers", type=common.positive_int, default=4)
    p.add_argument("--backups", type=common.int_list, default=[0, 1])
    p.add_argument("--seeds", type=common.int_list, default=[0, 1])
    p.add_argument("--train_updates", type=common.positive_int, default=150)
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--stragglers", default=DEFAULT_STRAGGLERS)
    p.add_argument("--timeout_s", type=common.positive_float, default=300.0,
                   help="per run; a run past it is stopped and recorded as "
                   "failed")
    p.add_argument("--out", default=os.path.join(common.RESULTS_DIR,
                                                 "straggler_efficiency"))
    p.add_argument("--run_root", default=os.path.join(
        common.RUN_ROOT, "straggler_efficiency"))
    common.add_keepalive_arg(p)
    args = p.parse_args(argv)
    if any(b < 0 or b >= args.workers for b in args.backups):
        p.error("--backups must be between 0 and workers-1 (%d)"
                % (args.workers - 1))
    if args.warmup_steps < 1 or args.warmup_steps >= args.train_updates - 1:
        p.error("--warmup_steps must be at least 1 and leave steps to "
                "measure (--train_updates %d)" % args.train_updates)
    args.straggler_entries = common.stragglers_or_usage_error(
        p, args.stragglers, args.workers)
    return args


def main(argv=None):
    args = parse_args(argv)
    common.exit_on_sigterm()
    machine = common.machine_start()
    pairs = [(b, kind) for b in args.backups for kind in ("clean",
                                                          "injected")]
    runs = {}
    # A failed or timed-out run is recorded with its error, so one hang does
    # not lose the other measurements.
    for seed, (b, kind) in common.interleaved(args.seeds, pairs):
        common.say("run b=%d %s seed %d ..." % (b, kind, seed))
        try:
            r = run_pair_member(args, b, seed, kind)
        except common.BenchmarkError as e:
            r = {"error": str(e)[-3000:], "grpc_stalls": 0,
                 "run_dir": run_dir_of(args, b, seed, kind),
                 "summary": {"wasted_share": None}}
            common.say("  FAILED: %s" % str(e).splitlines()[0])
        else:
            common.say("  %d updates in %.1f s, gRPC stalls %d" % (
                r["summary"]["updates"], r["summary"]["train_time_s"],
                r["grpc_stalls"]))
        runs[(b, kind, seed)] = r
    results, failed = [], []
    for seed in args.seeds:
        for b in args.backups:
            clean, injected = runs[(b, "clean", seed)], \
                runs[(b, "injected", seed)]
            # A run stopped at its timeout (seen: hung at an interval's end)
            # still has the telemetry of the steps it made: measure those.
            errors = {k: r["error"] for k, r in (("clean", clean),
                                                  ("injected", injected))
                      if "error" in r}
            try:
                e = efficiency(clean["run_dir"], injected["run_dir"],
                               args.workers, args.workers - b,
                               args.warmup_steps)
            except (common.BenchmarkError, OSError, KeyError) as err:
                errors["analysis"] = str(err)
                failed.append({"backups": b, "seed": seed, "errors": errors})
                continue
            results.append(dict(
                e, backups=b, seed=seed,
                replicas_to_aggregate=args.workers - b,
                workers=args.workers, run_errors=errors,
                grpc_stalls=clean["grpc_stalls"] + injected["grpc_stalls"],
                wasted_share_injected=injected["summary"]["wasted_share"],
                run_dirs=[clean["run_dir"], injected["run_dir"]]))
    summary = {}
    for b in args.backups:
        mine = [r for r in results if r["backups"] == b]
        if not mine:
            summary["b%d" % b] = {"pairs": 0, "failed_pairs": sum(
                f["backups"] == b for f in failed)}
            continue
        summary["b%d" % b] = {
            "pairs": len(mine),
            "failed_pairs": sum(f["backups"] == b for f in failed),
            "efficiency_ratio_mean": common.mean(
                [r["efficiency_ratio"] for r in mine]),
            "efficiency_ratio_each": [r["efficiency_ratio"] for r in mine],
            "slowdown_vs_clean_mean": common.mean(
                [r["slowdown_vs_clean"] for r in mine]),
            "base_step_s_mean": common.mean([r["base_step_s"]
                                             for r in mine]),
            "measured_step_s_mean": common.mean([r["measured_step_s"]
                                                 for r in mine]),
            "ideal_step_s_mean": common.mean([r["ideal_step_s"]
                                              for r in mine])}
    report = {"benchmark": "straggler_efficiency",
              "command": " ".join(["python -m benchmarks.straggler_efficiency"]
                                  + list(argv if argv is not None
                                         else sys.argv[1:])),
              "args": {k: v for k, v in vars(args).items()
                       if k != "straggler_entries"},
              "stragglers": args.straggler_entries,
              "machine": common.machine_end(machine), "target_ratio": 1.1,
              "summary": summary, "results": results, "failed": failed}
    path = common.write_report(args.out, report)
    if results:
        plot(results, args.out + ".png")
    for r in results:
        common.say("b=%d seed %d: base %.3f s, measured %.3f s, ideal %.3f s "
                   "-> measured/ideal %.2f, measured/clean %.2f" % (
                       r["backups"], r["seed"], r["base_step_s"],
                       r["measured_step_s"], r["ideal_step_s"],
                       r["efficiency_ratio"], r["slowdown_vs_clean"]))
    for f in failed:
        common.say("b=%d seed %d: FAILED (%s)" % (
            f["backups"], f["seed"], ", ".join(f["errors"])))
    common.say("wrote %s and %s.png" % (path, args.out))
    return 1 if not results else 0


if __name__ == "__main__":
    sys.exit(main())
